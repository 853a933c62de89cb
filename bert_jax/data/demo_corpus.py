"""A small embedded English corpus so the default job and the notebooks run with no downloads.

Simple, repetitive sentences: a tiny BERT learns them in a few hundred steps, which makes
fill-mask output checkable by eye.
"""

_SUBJECTS = ["the cat", "the dog", "a bird", "the child", "my friend", "the teacher", "a farmer", "the doctor"]
_VERBS = {"the cat": "sleeps on the warm mat", "the dog": "runs in the green park", "a bird": "sings in the tall tree",
          "the child": "plays with a red ball", "my friend": "reads a long book", "the teacher": "writes on the board",
          "a farmer": "works in the wide field", "the doctor": "helps the sick people"}
_TIMES = ["every morning", "in the evening", "at night", "on sunday", "after lunch", "before school"]
_WEATHER = ["the sun is bright", "the rain is cold", "the wind is strong", "the sky is blue", "the snow is white"]


def documents() -> list:
    """Documents as lists of sentences (the create_pretraining_data input layout)."""
    docs = []
    for i, subject in enumerate(_SUBJECTS):
        doc = []
        for j, time in enumerate(_TIMES):
            doc.append(f"{subject} {_VERBS[subject]} {time}.")
            doc.append(f"{_WEATHER[(i + j) % len(_WEATHER)]} {time}.")
        docs.append(doc)
    return docs


def sentences() -> list:
    return [s for doc in documents() for s in doc]


def text() -> str:
    """Blank-line separated documents, one sentence per line."""
    return "\n\n".join("\n".join(doc) for doc in documents()) + "\n"
