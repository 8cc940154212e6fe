"""VQA accuracy exactly as the official evaluator computes it, and ALBEF's retrieval recalls."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

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
