import re


def slugify(text, separator="-"):
    """URL slug of `text`: lowercase ASCII words joined by `separator`."""
    words = re.split(r"[^A-Za-z0-9]+", text)
    return separator.join(w for w in words if w)
