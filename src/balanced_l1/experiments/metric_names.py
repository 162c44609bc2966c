"""The names of the COCO box metrics a comparison reports, apart from pycocotools (which computes them), so that
what checks, logs or tabulates metrics does not import it."""

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
