"""The batch evaluation job: the paper's Table 1 and Figs. 3-4 over a folder of images.

    python -m tgrad evaluate --images DIR --model NAME --methods all --n 2000 \\
        --batch-size 32 --device cuda --out RESULTS_DIR
    torchrun --nproc_per_node=K -m tgrad evaluate ...        # the same, split over K processes

What it does (:func:`evaluate`):

* **The sample.** Images are the files with an image suffix directly in the folder or one
  level down (ImageNet-style class folders), keyed by their path relative to the folder
  (POSIX separators) and listed in sorted key order. The sample is the first ``n`` of a
  permutation of that list drawn with ``seed`` (torch's CPU generator), so the same folder
  and seed always give the same images, and a larger ``n`` extends a smaller one.
* **The class explained.** An image in a class folder named by an ImageNet WordNet id
  (``n01440764``) is explained and scored for that class (:func:`imagenet_wnids` gives the
  index); any other image for the model's top-1 class. The same class is used by the map
  and by both metrics.
* **One unit of work** = one image and one method: the map (``tgrad.methods.explain`` with
  that method alone, timed per image, device work included), then insertion / deletion
  (SPEC 4, ``steps`` steps, the blur substrate, probabilities) and Average Drop / Increase
  in Confidence. Each image goes through alone (batch of 1; ``batch_size`` is the number of
  perturbed images per forward pass), so a unit's numbers do not depend on which other
  images share a process or a run.
* **Resume.** Each finished unit is appended to a JSON-lines file as one record, flushed
  and fsynced. On start every ``results*.jsonl`` in the output folder is read and the
  units it holds are skipped, so a run stopped at any point and started again ends with
  the numbers of an uninterrupted run. Records are checked as they are read
  (:func:`read_records`): a line that does not decode (a torn last line from a kill, a
  line that is not UTF-8 or not JSON) is skipped with a warning naming file and line (a
  torn last line is also cut off); a record with a wrong type, a number out of range or
  not finite, or a second record of a unit with other results, stops the job with an
  error naming file and line. ``run.json`` holds the settings that change numbers
  (folder, model, weights, steps, seed); a rerun with other settings into the same
  folder is refused. A job in which no image could be read writes no report and raises
  :class:`NothingEvaluatedError`.
* **Many processes.** Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the job
  joins a ``torch.distributed`` group (NCCL on GPUs, gloo on CPU), agrees with the other
  ranks on the units already done, takes every ``world``-th image still to do, writes its
  records to ``results.rank{r}.jsonl`` and sends them to rank 0 at the end with
  ``gather_object``. Rank 0 writes the report. The output folder may be shared or local to
  each machine; resume works in both cases.
* **The report** (rank 0): ``table.csv`` / ``table.md`` (:data:`TABLE_COLUMNS`: means over
  the images; AUCs in [0, 1], Average Drop and Increase in Confidence in percent, the
  map's time in ms per image; the controls of :mod:`tgrad.methods.controls` last, ``True``
  in the ``control`` column), ``per_image.csv``, and the charts ``time_per_method.png``
  (Fig. 3) and ``insertion_deletion.png`` (Fig. 4). Means are sums in float64 with
  :func:`math.fsum` over the records sorted by image, so one process and K processes,
  interrupted or not, give the same table, bit for bit, in every column but
  ``ms_per_image`` (a time, different in every run).

The package: :mod:`~tgrad.evaluate.sample` (the sample), :mod:`~tgrad.evaluate.records`
(the results files), :mod:`~tgrad.evaluate.report` (the table and charts),
:mod:`~tgrad.evaluate.distributed` (torchrun's process group) and
:mod:`~tgrad.evaluate.job` (one unit of work, and the job).
"""

from tgrad.evaluate.job import evaluate
from tgrad.evaluate.records import RecordError, check_record, read_records
from tgrad.evaluate.report import TABLE_COLUMNS, NothingEvaluatedError, Report, summarize
from tgrad.evaluate.sample import IMAGE_SUFFIXES, Sample, imagenet_wnids, list_images, sample_images

__all__ = [
    "IMAGE_SUFFIXES",
    "TABLE_COLUMNS",
    "NothingEvaluatedError",
    "RecordError",
    "Report",
    "Sample",
    "check_record",
    "evaluate",
    "imagenet_wnids",
    "list_images",
    "read_records",
    "sample_images",
    "summarize",
]
