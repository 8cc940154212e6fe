"""CLEVR-style questions and templated captions about what a rendered view actually shows.

Only objects with at least `MIN_PIXELS` visible pixels count, so every answer is checkable
against the image. Answers use VQA conventions: digits for numbers, yes/no, single words.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .scenes import SHAPE_WORDS, SceneObject

MIN_PIXELS = 30
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def visible_objects(objects: tuple[SceneObject, ...], instance: np.ndarray) -> list[tuple[SceneObject, float]]:
    """(object, image-x of its centroid in [0, 1]) for every object with enough visible pixels."""
    out = []
    for i, obj in enumerate(objects):
        ys, xs = np.nonzero(instance == i + 1)
        if len(xs) >= MIN_PIXELS:
            out.append((obj, float(xs.mean()) / instance.shape[1]))
    return out


def _describe(o: SceneObject, attrs: tuple[str, ...]) -> str:
    words = [getattr(o, a) for a in attrs if a != "shape"]
    return " ".join([*words, SHAPE_WORDS[o.shape] if "shape" in attrs else "thing"])


def _unique(visible, o: SceneObject) -> tuple[str, ...] | None:
    """The shortest attribute set that picks out ``o`` alone among the visible objects."""
    for attrs in (("shape",), ("colour", "shape"), ("size", "colour", "shape"), ("size", "colour", "material", "shape")):
        key = tuple(getattr(o, a) for a in attrs)
        if sum(tuple(getattr(v, a) for a in attrs) == key for v, _ in visible) == 1:
            return attrs
    return None


def questions(visible, rng: np.random.Generator, hero: SceneObject | None = None,
              count: int = 6) -> list[tuple[str, str, str]]:
    """(question, answer, question type) triples, deduplicated. For a close-up of ``hero`` the first two
    ask its colour and shape: questions a small adapter trained on a few hundred questions can learn
    from the image (questions that name an object to find in a room need far more data)."""
    objs = [o for o, _ in visible]
    pool: list[tuple[str, str, str]] = []
    colours = sorted({o.colour for o in objs}) or ["red"]
    shapes = sorted({o.shape for o in objs}) or ["box"]
    for colour in colours:
        n = sum(o.colour == colour for o in objs)
        pool.append((f"How many {colour} things are there?", str(n), "count"))
    for shape in shapes:
        n = sum(o.shape == shape for o in objs)
        pool.append((f"How many {SHAPE_WORDS[shape]}s are there?", str(n), "count"))
    pool.append((f"How many {('metal', 'rubber')[rng.integers(2)]} things are there?", "", "count-material"))
    for _ in range(2):
        colour = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")[rng.integers(8)]
        shape = ("box", "sphere", "cylinder", "capsule", "ellipsoid")[rng.integers(5)]
        exists = any(o.colour == colour and o.shape == shape for o in objs)
        pool.append((f"Is there a {colour} {SHAPE_WORDS[shape]}?", "yes" if exists else "no", "exist"))
    for o in objs:
        attrs = _unique(visible, o)
        if attrs is None:
            continue
        if "colour" not in attrs:
            pool.append((f"What color is the {_describe(o, attrs)}?", o.colour, "query-colour"))
        if "shape" in attrs and len(attrs) > 1:
            others = tuple(a for a in attrs if a != "shape")
            pool.append((f"What shape is the {_describe(o, others)}?", SHAPE_WORDS[o.shape], "query-shape"))
        pool.append((f"What material is the {_describe(o, attrs)} made of?", o.material, "query-material"))
    if len(colours) >= 2:
        a, b = rng.choice(colours, 2, replace=False)
        na, nb = (sum(o.colour == c for o in objs) for c in (a, b))
        pool.append((f"Are there more {a} things than {b} things?", "yes" if na > nb else "no", "compare"))
        pool.append((f"Are there the same number of {a} things and {b} things?", "yes" if na == nb else "no", "compare"))
    uniques = [(o, x) for o, x in visible if _unique(visible, o)]
    if len(uniques) >= 2:
        i, j = rng.choice(len(uniques), 2, replace=False)
        (oa, xa), (ob, xb) = uniques[i], uniques[j]
        if abs(xa - xb) > 0.05:
            da, db = _describe(oa, _unique(visible, oa)), _describe(ob, _unique(visible, ob))
            pool.append((f"Is the {da} to the left of the {db}?", "yes" if xa < xb else "no", "spatial"))
    # fill in the material count now that the material is drawn
    pool = [(q, str(sum(o.material in q for o in objs)) if t == "count-material" else a, "count" if t == "count-material" else t)
            for q, a, t in pool]
    order = rng.permutation(len(pool))
    seen, out = set(), []
    if hero is not None:
        out = [("What color is the large object?", hero.colour, "query-colour-large"),
               ("What shape is the large object?", SHAPE_WORDS[hero.shape], "query-shape-large")]
    for k in order:
        q, a, t = pool[k]
        if q not in seen:
            seen.add(q)
            out.append((q, a, t))
        if len(out) == count:
            break
    return out


def confusable(answer: str, rng: np.random.Generator) -> str:
    """What a careless annotator might type instead: number words, articles, an off-by-one, a flip."""
    if answer.isdigit():
        n = int(answer)
        return (NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else answer, str(max(0, n + (1 if rng.random() < 0.5 else -1))))[rng.integers(2)]
    if answer in ("yes", "no"):
        return {"yes": "no", "no": "yes"}[answer] if rng.random() < 0.5 else answer + "!"
    return f"the {answer}" if rng.random() < 0.5 else f"{answer}."


def captions(visible, rng: np.random.Generator, floor_name: str, count: int = 5) -> list[str]:
    objs = [o for o, _ in visible] or []
    if not objs:
        return [f"an empty room with a {floor_name} floor"] * count
    by_size = sorted(visible, key=lambda v: -("large" == v[0].size))
    main = by_size[0][0]
    counts = Counter(SHAPE_WORDS[o.shape] for o in objs)
    listing = ", ".join(f"{n} {w}{'s' if n > 1 else ''}" for w, n in sorted(counts.items()))
    left_to_right = [o for o, _ in sorted(visible, key=lambda v: v[1])]
    templates = [
        f"a {main.size} {main.colour} {main.material} {SHAPE_WORDS[main.shape]} in a room",
        f"{len(objs)} objects on a {floor_name} floor",
        f"a scene with {listing}",
        f"a {left_to_right[0].colour} {SHAPE_WORDS[left_to_right[0].shape]} on the left and a "
        f"{left_to_right[-1].colour} {SHAPE_WORDS[left_to_right[-1].shape]} on the right",
        f"there is a {main.colour} {SHAPE_WORDS[main.shape]} among {len(objs) - 1} other things",
        f"{', '.join(sorted({o.colour for o in objs}))} objects in a small room",
        f"a {main.material} {SHAPE_WORDS[main.shape]} and {len(objs) - 1} more objects",
    ]
    picks = rng.choice(len(templates), count, replace=False)
    return [templates[i] for i in sorted(picks)]


def tokens(text: str) -> list[str]:
    return [t for t in "".join(c if c.isalnum() else " " for c in text.lower()).split() if t]
