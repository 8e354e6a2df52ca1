"""Which of a teacher's encoder layers a depth student keeps: a pure function of two numbers."""

from __future__ import annotations


def choose_layers(teacher_layers: int, depth: int) -> list[int]:
    """The teacher layer indices (ascending) a student of `depth` layers is initialised from.

    Spread evenly with both ends kept: layer i of the student is teacher layer
    round(i x (L - 1) / (depth - 1)). The last layer stays because the pooler and the classifier
    were trained on its output; the first stays because it was trained on the embeddings' output.
    Between them the gaps are as even as they can be, so no kept layer reads an input more than one
    or two dropped layers away from the one it was trained on. This is DistilBERT's choice
    (Sanh et al., 2019: teacher layers [0, 2, 4, 7, 9, 11] of 12 = round(i x 11 / 5)) and TinyBERT's
    uniform mapping. "Poor Man's BERT" (Sajjad et al., 2020) drops the top layers of a pretrained
    model before fine-tuning; a teacher here is already fine-tuned, and dropping its top layers
    would hand its classifier a representation it never saw. For MiniLM-L6 (L = 6):
    depth 4 -> [0, 2, 3, 5] (1.67 and 3.33 round to 2 and 3), depth 3 -> [0, 2, 5] (2.5 rounds
    half to even), depth 2 -> [0, 5]; depth 1 keeps only the last layer, the classifier's input.
    """
    if teacher_layers < 2:
        raise ValueError(f"a teacher of {teacher_layers} layer(s) has no layer to drop")
    if not 1 <= depth < teacher_layers:
        raise ValueError(
            f"a student of {teacher_layers} layers needs 1 to {teacher_layers - 1} layers, got {depth}"
        )
    if depth == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (depth - 1)) for i in range(depth)]
