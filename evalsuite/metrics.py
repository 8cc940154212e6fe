"""Metrics shared across tasks. Each follows a named reference definition (docs/protocols.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of samples whose target is among the k highest logits (ties broken by topk's order)."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be N×C and targets N, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == targets[:, None]
    return {k: hits[:, : min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Weighted k-NN class scores (DINO protocol), one N_test×C tensor per k.

    Features are L2-normalised; each of the k most cosine-similar training samples votes for
    its class with weight exp(sim / T). Test samples are processed in chunks so memory stays
    bounded by chunk_size × N_train. k larger than the bank is clipped to the bank size.
    """
    bank = F.normalize(train_features.float(), dim=1)
    kmax = min(max(ks), bank.shape[0])
    scores = {k: [] for k in ks}
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        sims, idx = (query @ bank.T).topk(kmax, dim=1)
        weights = (sims / temperature).exp()
        onehot = F.one_hot(train_labels[idx], num_classes).float()  # n×kmax×C
        for k in ks:
            kk = min(k, kmax)
            scores[k].append((onehot[:, :kk] * weights[:, :kk, None]).sum(dim=1))
    return {k: torch.cat(v) for k, v in scores.items()}


# ---------------------------------------------------------------------------------------
# Dense prediction
# ---------------------------------------------------------------------------------------
EIGEN_CROP = (45, 471, 41, 601)  # rows 45:471, cols 41:601 of the 480×640 NYUv2 ground truth
DEPTH_KEYS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
MIN_VALID_PIXELS = 10


@dataclass(frozen=True)
class DepthConvention:
    """What differs between the depth evaluation codes: the valid range's bounds, whether predictions
    are clamped, and silog = scale·sqrt(mean(e²) − λ·mean(e)²) with e = ln pred − ln gt."""

    name: str
    inclusive_bounds: bool  # min ≤ gt ≤ max (Pixio) or min < gt < max (DINOv2's toolbox)
    clamp: bool  # predictions clamped to [min, max] before scoring
    silog_lambda: float
    silog_scale: float

    @property
    def silog_definition(self) -> str:
        scale = f"{self.silog_scale:g}·" if self.silog_scale != 1 else ""
        lam = "" if self.silog_lambda == 1 else f"{self.silog_lambda:g}·"
        return f"{scale}sqrt(mean(e²) − {lam}mean(e)²), e = ln pred − ln gt ({self.name})"


# Pixio `evaluation/monodepth/util/misc.py::eval_depth` and `eval_monodepth.py`: gt in [min, max], no clamp
PIXIO_DEPTH = DepthConvention("pixio", inclusive_bounds=True, clamp=False, silog_lambda=0.5, silog_scale=1.0)
# DINOv2/DINOv3 (Monocular-Depth-Estimation-Toolbox `metrics.py`, `dinov3/eval/depth/metrics.py`)
DINOV2_DEPTH = DepthConvention("dinov2", inclusive_bounds=False, clamp=True, silog_lambda=1.0, silog_scale=100.0)
DEPTH_CONVENTIONS = {c.name: c for c in (PIXIO_DEPTH, DINOV2_DEPTH)}


def eigen_crop_mask(height: int, width: int, device=None) -> torch.Tensor:
    if (height, width) != (480, 640):
        raise ValueError(f"the Eigen crop is defined on 480×640 ground truth, got {height}×{width}")
    top, bottom, left, right = EIGEN_CROP
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[top:bottom, left:right] = True
    return mask


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None, min_depth: float = 1e-3,
                  max_depth: float = 10.0, eigen_crop: bool = False,
                  convention: DepthConvention = DINOV2_DEPTH) -> dict[str, float]:
    """Monocular depth metrics on B×H×W tensors: computed per image, then averaged over images.

    Valid pixels: gt inside [min_depth, max_depth] (bounds per ``convention``), inside ``valid`` and
    the Eigen crop if asked; predictions are clamped to the range if the convention does. Images
    with fewer than 10 valid pixels are skipped (``n_images`` counts the kept ones; ``per_image``
    lists each kept image's values in order). δk = share of max(gt/pred, pred/gt) < 1.25^k; RMSE is
    the mean of per-image RMSEs, not a pooled RMSE; silog follows the convention.
    """
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must both be B×H×W, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if convention.inclusive_bounds:  # in gt's own dtype, as the references compare
        mask = (gt > 0) & (gt >= min_depth) & (gt <= max_depth)
    else:
        mask = (gt > min_depth) & (gt < max_depth)
    pred = pred.double()
    if convention.clamp:
        pred = pred.clamp(min_depth, max_depth)
    gt = gt.double()
    if valid is not None:
        mask &= valid.bool()
    if eigen_crop:
        mask &= eigen_crop_mask(*gt.shape[1:], device=gt.device)
    per_image = {k: [] for k in DEPTH_KEYS}
    for p, g, m in zip(pred, gt, mask):
        if m.sum() < MIN_VALID_PIXELS:
            continue
        p, g = p[m], g[m]
        ratio = torch.maximum(g / p, p / g)
        err = torch.log(p) - torch.log(g)
        values = {
            "d1": (ratio < 1.25).double().mean(), "d2": (ratio < 1.25**2).double().mean(),
            "d3": (ratio < 1.25**3).double().mean(), "abs_rel": ((g - p).abs() / g).mean(),
            "sq_rel": ((g - p) ** 2 / g).mean(), "rmse": ((g - p) ** 2).mean().sqrt(),
            "rmse_log": (err**2).mean().sqrt(), "log10": (torch.log10(p) - torch.log10(g)).abs().mean(),
            "silog": convention.silog_scale * ((err**2).mean() - convention.silog_lambda * err.mean() ** 2).clamp_min(0).sqrt(),
        }
        for k, v in values.items():
            per_image[k].append(v.item())
    n = len(per_image["d1"])
    if n == 0:
        raise ValueError("no image has at least 10 valid depth pixels")
    return {**{k: sum(v) / n for k, v in per_image.items()}, "n_images": n, "per_image": per_image}


class SegmentationMeter:
    """Dataset-level segmentation metrics.

    Intersections and unions are summed per class over all images, then IoU per class = I/U. mIoU
    follows ``absent``: ``"exclude"`` (mmseg's IoUMetric, the default) averages over classes whose
    union is non-zero; ``"zero"`` (Pixio's ``eval_semseg.py``: I / (U + 1e-6) over every class)
    counts a class absent from prediction and ground truth as 0. mAcc averages over classes present
    in the ground truth; aAcc = correct / labelled. Each image's per-class areas are kept (``areas``)
    so that the dataset-level mIoU can be bootstrapped over images.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, absent: str = "exclude"):
        if absent not in ("exclude", "zero"):
            raise ValueError(f"absent must be exclude or zero, got {absent!r}")
        self.num_classes, self.ignore_index, self.absent = num_classes, ignore_index, absent
        self.per_image: list[torch.Tensor] = []  # each 4×C: intersection, union, predicted area, labelled area

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != self.ignore_index
        pred, target = pred[keep].long(), target[keep].long()
        if target.numel() and (target.max() >= self.num_classes or target.min() < 0):
            raise ValueError(f"target labels outside 0..{self.num_classes - 1} (ignore {self.ignore_index})")
        if pred.numel() and (pred.max() >= self.num_classes or pred.min() < 0):
            raise ValueError(f"predicted labels outside 0..{self.num_classes - 1}")
        hit = pred[pred == target]
        bins = lambda x: torch.bincount(x, minlength=self.num_classes)[: self.num_classes].double().cpu()
        inter, area_p, area_t = bins(hit), bins(pred), bins(target)
        self.per_image.append(torch.stack([inter, area_p + area_t - inter, area_p, area_t]))

    @property
    def areas(self) -> torch.Tensor:
        """N×4×C: per image, the intersection, union, predicted and labelled area of every class."""
        return torch.stack(self.per_image) if self.per_image else torch.zeros(0, 4, self.num_classes, dtype=torch.float64)

    def compute(self) -> dict:
        return segmentation_scores(self.areas.sum(dim=0), self.absent)

    def dataset_samples(self, scale: float = 100.0) -> dict:
        """The per-image sufficient statistics of the dataset-level mIoU, for a bootstrap over images
        (`miou_of_resamples`): per image, [class, intersection, union, labelled area] of each class
        it touches (sparse: a few classes per image, ~0.5 MB for ADE20K's 2,000 validation images)."""
        images = [[[c, *(round(float(v)) for v in areas[[0, 1, 3], c])] for c in torch.nonzero(areas[1] > 0).flatten().tolist()]
                  for areas in self.per_image]
        return {"statistic": MIOU_STATISTIC, "absent": self.absent, "num_classes": self.num_classes, "scale": scale,
                "images": images}


def segmentation_scores(totals: torch.Tensor, absent: str = "exclude") -> dict:
    """mIoU, mAcc, aAcc from summed 4×C areas (intersection, union, predicted, labelled)."""
    intersection, union, _, label_area = totals
    present = union > 0
    if absent == "zero":
        iou = intersection / (union + 1e-6)
        miou = iou.mean().item()
    else:
        iou = intersection / union
        miou = iou[present].mean().item() if present.any() else float("nan")
    acc = intersection / label_area
    return {
        "mIoU": miou,
        "mAcc": acc[label_area > 0].mean().item() if (label_area > 0).any() else float("nan"),
        "aAcc": (intersection.sum() / label_area.sum()).item(),
        "per_class_iou": [float(v) if p else None for v, p in zip(iou.tolist(), present.tolist())],
    }


# ---------------------------------------------------------------------------------------
# VQA v2: the official evaluator (GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py,
# commit a013f00, 2021), its quirks kept on purpose: our numbers must equal the server's.
# ---------------------------------------------------------------------------------------
# Verbatim, including the four capitalised keys ("Id've", "I'dve", "Im", "Ive") that can never match
# (the text is lower-cased before the lookup) and "somebody'd" → "somebodyd", which removes an apostrophe.
VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
VQA_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
VQA_ARTICLES = ("a", "an", "the")
VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# sic: "(?!<=\d)" is a negative *lookahead* for the text "<=" + digit, always true before a ".", so the
# pattern deletes every period not followed by a digit ("a.m." → "am", "2.5" kept).
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(\,)(\d)")
VQA_ANSWER_TYPES = ("yes/no", "number", "other")


def vqa_punctuation(text: str) -> str:
    """``processPunctuation``: each punctuation mark is deleted if it touches a space in the *original*
    text, or if the text holds digit,digit anywhere; otherwise it becomes a space. Then periods not
    followed by a digit are deleted (at most 32: the reference passes re.UNICODE as ``count``)."""
    out = text
    digit_comma_digit = _VQA_DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in VQA_PUNCTUATION:
        if mark + " " in text or " " + mark in text or digit_comma_digit:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _VQA_PERIOD.sub("", out, count=re.UNICODE)


def vqa_digits_articles(text: str) -> str:
    """``processDigitArticle``: lower-case, number words zero..ten (and "none") → digits, articles
    dropped, then the contraction table, word by word."""
    words = [VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def vqa_normalise(text: str) -> str:
    return vqa_digits_articles(vqa_punctuation(text))


def _vqa_clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's accuracy in [0, 1], as ``VQAEval.evaluate``: newlines/tabs → spaces and strip
    always; punctuation, digits, articles and contractions normalised on both sides **only when
    the human answers are not all identical** (so a unanimous "yes" against "Yes" scores 0); then
    the mean over each human i of min(1, #{other humans j ≠ i whose answer equals the prediction}/3)
    — 0, .3, .6, .9, 1 for 0..≥4 matching humans out of 10. Humans are told apart by position,
    as the reference's answer dicts are by their ``answer_id``."""
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    prediction, answers = _vqa_clean(prediction), [_vqa_clean(a) for a in answers]
    if len(set(answers)) > 1:
        answers = [vqa_normalise(a) for a in answers]
        prediction = vqa_normalise(prediction)
    matches = [a == prediction for a in answers]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(answers)


def official_round(value: float, digits: int = 2) -> float:
    """Python 2's ``round`` (the evaluator's): halves of the float's exact value go away from zero."""
    from decimal import ROUND_HALF_UP, Decimal

    return float(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class VQAScores:
    """Accuracies in percent, unrounded: ``overall`` is the mean over questions (not over types);
    ``per_question`` maps question id → accuracy in percent, in annotation order."""

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    per_question: dict[int, float]

    def official(self, digits: int = 2) -> dict:
        """The evaluator's ``accuracy`` dict: ``overall``, ``perAnswerType``, ``perQuestionType``, rounded."""
        rnd = lambda v: official_round(v, digits)
        return {"overall": rnd(self.overall), "perAnswerType": {k: rnd(v) for k, v in self.per_answer_type.items()},
                "perQuestionType": {k: rnd(v) for k, v in self.per_question_type.items()}}


def vqa_accuracy(predictions: Mapping[int, str], annotations: Sequence[Mapping]) -> VQAScores:
    """Score ``predictions`` (question id → answer) against VQA v2 annotations (``question_id``,
    ``answers[].answer``, ``answer_type``, ``question_type``). Like the reference's ``loadRes``, the
    predictions must cover exactly the annotated questions."""
    ids = [a["question_id"] for a in annotations]
    missing = [q for q in ids if q not in predictions]
    extra = set(predictions) - set(ids)
    if missing or extra:
        raise ValueError(f"results do not correspond to the annotations: {len(missing)} annotated questions without an "
                         f"answer (e.g. {missing[:3]}), {len(extra)} answers to questions not annotated "
                         f"(e.g. {sorted(extra)[:3]})")
    per_question, by_answer, by_question = {}, {}, {}
    for ann in annotations:
        acc = 100 * vqa_question_accuracy(predictions[ann["question_id"]], [a["answer"] for a in ann["answers"]])
        per_question[ann["question_id"]] = acc
        by_answer.setdefault(ann["answer_type"], []).append(acc)
        by_question.setdefault(ann["question_type"], []).append(acc)
    if not per_question:
        raise ValueError("no annotated questions to score")
    mean = lambda v: float(sum(v) / len(v))
    return VQAScores(mean(list(per_question.values())), {k: mean(v) for k, v in by_answer.items()},
                     {k: mean(v) for k, v in by_question.items()}, per_question)


def _read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not JSON: {exc}") from None


def vqa_score_files(results: Path, annotations: Path, questions: Path | None = None) -> VQAScores:
    """Score an official VQA result file (a JSON list of ``{"question_id", "answer"}``) against an
    annotation file, as ``vqaEval.py`` does; stricter than its ``loadRes`` only where that one is
    silent: a question answered twice is an error here (the reference keeps the last answer)."""
    entries = _read_json(results, "result file")
    anns = _read_json(annotations, "annotation file")
    if not isinstance(entries, list):
        raise ValueError(f"result file {results}: expected a JSON list of {{question_id, answer}}, got {type(entries).__name__}")
    if not isinstance(anns, dict) or not isinstance(anns.get("annotations"), list):
        raise ValueError(f"annotation file {annotations}: expected an object with an 'annotations' list")
    predictions: dict[int, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("answer"), str) or "question_id" not in entry:
            raise ValueError(f"result file {results}: entry {i} is not {{'question_id': int, 'answer': str}}: {entry!r:.80}")
        if entry["question_id"] in predictions:
            raise ValueError(f"result file {results}: question {entry['question_id']} is answered twice")
        predictions[entry["question_id"]] = entry["answer"]
    if questions is not None:
        listed = _read_json(questions, "question file")
        if not isinstance(listed, dict) or not isinstance(listed.get("questions"), list):
            raise ValueError(f"question file {questions}: expected an object with a 'questions' list")
        asked = {q["question_id"] for q in listed["questions"]}
        unasked = [a["question_id"] for a in anns["annotations"] if a["question_id"] not in asked]
        if unasked:
            raise ValueError(f"question file {questions} lacks {len(unasked)} annotated questions (e.g. {unasked[:3]}): "
                             "the two files are not of the same split")
    try:
        return vqa_accuracy(predictions, anns["annotations"])
    except ValueError as exc:
        raise ValueError(f"result file {results}: {exc}") from None


# ---------------------------------------------------------------------------------------
# Dataset-level statistics over resampled images (the segmentation mIoU bootstrap)
# ---------------------------------------------------------------------------------------
MIOU_STATISTIC = "segmentation-miou"


def segmentation_areas(samples: Mapping) -> torch.Tensor:
    """N×3×C per-image areas (intersection, union, labelled) from `SegmentationMeter.dataset_samples`."""
    if samples.get("statistic") != MIOU_STATISTIC:
        raise ValueError(f"not segmentation samples: statistic {samples.get('statistic')!r}")
    areas = torch.zeros(len(samples["images"]), 3, samples["num_classes"], dtype=torch.float64)
    rows = [(i, *entry) for i, image in enumerate(samples["images"]) for entry in image]
    if rows:
        table = torch.tensor(rows, dtype=torch.float64)
        image, cls = table[:, 0].long(), table[:, 1].long()
        areas[image, :, cls] = table[:, 2:]
    return areas


def dataset_statistic(samples: Mapping, weights: torch.Tensor | None = None) -> float | torch.Tensor:
    """The metric ``samples`` describe, on all images (``weights`` None) or on each resample (R×N)."""
    areas = segmentation_areas(samples)
    if weights is None:
        return miou_of_resamples(areas, torch.ones(1, len(areas)), samples["absent"], samples["scale"]).item()
    return miou_of_resamples(areas, weights, samples["absent"], samples["scale"])


def miou_of_resamples(areas: torch.Tensor, weights: torch.Tensor, absent: str, scale: float = 100.0) -> torch.Tensor:
    """The dataset-level mIoU of each resample: ``weights`` (R×N) counts how often each image is drawn;
    intersections and unions are summed over the drawn images, then IoU per class, then the mean as
    `segmentation_scores` takes it (never a mean of per-image IoUs)."""
    weights = weights.to(torch.float64)
    inter, union = weights @ areas[:, 0], weights @ areas[:, 1]
    if absent == "zero":
        return (inter / (union + 1e-6)).mean(dim=1) * scale
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.nan)
    return iou.nanmean(dim=1) * scale


# ---------------------------------------------------------------------------------------
# Image–text retrieval (ALBEF `Retrieval.py::itm_eval` conventions)
# ---------------------------------------------------------------------------------------
RECALL_KS = (1, 5, 10)


def ranks_of(scores: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """0-based rank of ``targets[q]`` in row q of ``scores`` (Q×C), sorted by descending score with
    ties broken by the lower candidate index first: rank = #{higher} + #{equal with a lower index}.
    (ALBEF's ``np.argsort(score)[::-1]`` leaves tie order to the sort implementation.)"""
    if torch.isnan(scores).any():
        raise ValueError("retrieval scores contain NaN")
    out = []
    index = torch.arange(scores.shape[1], device=scores.device)
    for start in range(0, scores.shape[0], chunk):
        rows, target = scores[start : start + chunk], targets[start : start + chunk]
        own = rows.gather(1, target[:, None])
        ahead = (rows > own) | ((rows == own) & (index[None] < target[:, None]))
        out.append(ahead.sum(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def retrieval_ranks(scores_i2t: torch.Tensor, scores_t2i: torch.Tensor,
                    txt2img: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t ranks per image, t2i ranks per caption). An image's rank is the best rank of any of its
    captions in its row of ``scores_i2t`` (n_img × n_txt); a caption's is its image's rank in its row of
    ``scores_t2i`` (n_txt × n_img)."""
    txt2img = torch.as_tensor(txt2img, dtype=torch.long)
    n_img, n_txt = scores_i2t.shape
    if scores_t2i.shape != (n_txt, n_img) or len(txt2img) != n_txt:
        raise ValueError(f"scores must be n_img×n_txt and n_txt×n_img with one image per caption, got "
                         f"{tuple(scores_i2t.shape)}, {tuple(scores_t2i.shape)} and {len(txt2img)} captions")
    if n_txt and (txt2img.min() < 0 or txt2img.max() >= n_img):
        raise ValueError("caption→image indices outside the image range")
    if torch.bincount(txt2img, minlength=n_img).min() == 0:
        raise ValueError("every image needs at least one caption")
    # each caption's rank within its own image's row, then the best caption per image
    caption_ranks = ranks_of(scores_i2t[txt2img], torch.arange(n_txt))
    i2t = torch.full((n_img,), n_txt, dtype=torch.long).scatter_reduce(0, txt2img, caption_ranks, "amin")
    return i2t, ranks_of(scores_t2i, txt2img)


def retrieval_recall(scores_i2t: torch.Tensor, scores_t2i: torch.Tensor, txt2img: Sequence[int],
                     ks: Sequence[int] = RECALL_KS) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(metrics, per-sample scores): ``tr_r{k}`` (image → text: % of images with a caption in the top
    k), ``ir_r{k}`` (text → image: % of captions with their image in the top k), ``rsum`` (their sum).

    Per sample: ``tr_r{k}`` per image and ``ir_r{k}`` per caption (100 or 0), and ``rsum`` per image =
    its TR hits + (n_img/n_txt)·(its captions' IR hits), whose mean is exactly RSUM (so a bootstrap
    over images resamples each image with its captions)."""
    i2t, t2i = retrieval_ranks(scores_i2t, scores_t2i, txt2img)
    n_img, n_txt = len(i2t), len(t2i)
    metrics, per_sample = {}, {}
    txt2img = torch.as_tensor(txt2img, dtype=torch.long)
    rsum = torch.zeros(n_img, dtype=torch.float64)
    for k in ks:
        tr, ir = 100.0 * (i2t < k).double(), 100.0 * (t2i < k).double()
        metrics[f"tr_r{k}"], metrics[f"ir_r{k}"] = tr.mean().item(), ir.mean().item()
        per_sample[f"tr_r{k}"], per_sample[f"ir_r{k}"] = tr.tolist(), ir.tolist()
        rsum += tr + torch.zeros(n_img, dtype=torch.float64).index_add(0, txt2img, ir) * n_img / n_txt
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("tr", "ir") for k in ks)
    per_sample["rsum"] = rsum.tolist()
    return metrics, per_sample
