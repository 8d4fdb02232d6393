def word_count(text):
    """Number of words in `text` (words are separated by any whitespace)."""
    if not text:
        return 0
    return len(text.split(" "))


def average_word_length(text):
    """Mean length of the words in `text`, 0.0 for an empty text."""
    words = text.split()
    if not words:
        return 0.0
    return sum(len(w) for w in words) / len(words)
