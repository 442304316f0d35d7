"""Stands in for easyocr, which needs torch (GPU-sized) and downloads its models: OSWorld's
docs metrics import it at the top, and only `compare_image_text` uses it."""


class Reader:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("easyocr is left out of this image (it needs torch): "
                           "OCR metrics (compare_image_text) are not supported")
