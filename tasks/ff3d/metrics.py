"""MapAnything's dense N-view metrics (``benchmarking/dense_n_view/benchmark.py``,
``mapanything/utils/metrics.py``, ``mapanything/utils/geometry.py``), under its key names.

Everything is in view 0's camera frame, GT and prediction each in their own. Both sides are divided
by their own mean point distance over the GT-valid pixels of all views (``avg_dis``: no median, no
Umeyama); depth and camera translations share that factor. Per view, relative errors and inliers
are averaged over the view's valid pixels, then per set over views (each view counts the same);
the dataset value is the mean over sets. Units as MapAnything's: ratios in [0, 1], ``pose_auc_5`` in
%, ray errors in degrees. A view without a valid pixel makes its set's pixel metrics NaN (plain
``np.mean``, as the reference).
"""

from __future__ import annotations

import math

import numpy as np

KEYS = ("metric_scale_abs_rel", "pointmaps_abs_rel", "pointmaps_inlier_thres_103", "pose_ate_rmse", "pose_auc_5",
        "z_depth_abs_rel", "z_depth_inlier_thres_103", "ray_dirs_err_deg")
HIGHER_IS_BETTER = {"pointmaps_inlier_thres_103", "pose_auc_5", "z_depth_inlier_thres_103"}
POSE_KEYS = ("pose_ate_rmse", "pose_auc_5")


def valid_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean over ``mask``; NaN (not a number: MapAnything's ``valid`` flag) when nothing is valid."""
    count = mask.sum()
    return float((values * mask).sum() / count) if count else float("nan")


def rel_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """``m_rel_ae``: mean of ‖p̂ − p‖ / ‖p‖ over ``mask`` and ‖p‖ > 0 (|ẑ − z| / |z| for depth)."""
    gt_norm = np.linalg.norm(gt, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.nan_to_num(np.linalg.norm(pred - gt, axis=-1) / gt_norm, nan=0, posinf=0, neginf=0)
    return valid_mean(rel, mask & (gt_norm > 0))


def inlier_ratio(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, threshold: float = 1.03) -> float:
    """``thresh_inliers``: share of pixels with max(‖p‖/‖p̂‖, ‖p̂‖/‖p‖) < 1.03 — a ratio of *norms*
    (distances from view 0's centre; |z| for depth), direction ignored; a prediction of norm 0 is an outlier."""
    gt_norm, pred_norm = np.linalg.norm(gt, axis=-1), np.linalg.norm(pred, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_1 = np.nan_to_num(gt_norm / pred_norm, nan=threshold + 1, posinf=threshold + 1, neginf=threshold + 1)
        rel_2 = np.nan_to_num(pred_norm / gt_norm, nan=0, posinf=0, neginf=0)
    ratio = np.maximum(rel_1, rel_2)
    return valid_mean(((0 < ratio) & (ratio < threshold)).astype(np.float32), mask & (gt_norm > 0))


def avg_dis(points: list[np.ndarray], valid: list[np.ndarray]) -> float:
    """``normalize_multiple_pointclouds(norm_mode="avg_dis")``'s factor: Σ‖p‖ over the valid pixels of
    all views / (count + 1e-8), at least 1e-8."""
    total = sum(float(np.linalg.norm(p[v], axis=-1).sum()) for p, v in zip(points, valid))
    count = sum(int(v.sum()) for v in valid)
    return max(total / (count + 1e-8), 1e-8)


def ray_error_deg(pred_rays: np.ndarray, gt_rays: np.ndarray) -> float:
    """2·asin(‖d̂ − d‖/2) in degrees, averaged over every pixel (no mask)."""
    l2 = np.linalg.norm(pred_rays - gt_rays, axis=-1)
    return float(np.mean(2 * np.arcsin(np.clip(l2 / 2, 0, 1)) * 180 / math.pi))


def rotation_angle_deg(r_gt: np.ndarray, r_pred: np.ndarray, eps: float = 1e-15) -> np.ndarray:
    """The full geodesic angle between rotations (via quaternions, as VGGT's ``rotation_angle``), 0–180°."""
    q_gt, q_pred = matrix_to_quaternion(r_gt), matrix_to_quaternion(r_pred)
    loss = np.clip(1 - (q_pred * q_gt).sum(-1) ** 2, eps, None)
    return np.degrees(np.arccos(np.clip(1 - 2 * loss, -1, 1)))


def translation_angle_deg(t_gt: np.ndarray, t_pred: np.ndarray, eps: float = 1e-15) -> np.ndarray:
    """Angle between translation directions folded to 0–90° (acos |cos|); a zero GT translation gives 90°."""
    t = t_pred / (np.linalg.norm(t_pred, axis=-1, keepdims=True) + eps)
    g = t_gt / (np.linalg.norm(t_gt, axis=-1, keepdims=True) + eps)
    loss = np.clip(1.0 - (t * g).sum(-1) ** 2, eps, None)
    err = np.degrees(np.arccos(np.sqrt(1 - loss)))
    return np.minimum(err, np.abs(180 - err))


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z) of rotation matrices …×3×3 (sign arbitrary: the angle uses q·q²)."""
    r = np.asarray(r, dtype=np.float64)
    m = r.reshape(-1, 3, 3)
    out = np.empty((len(m), 4))
    for i, a in enumerate(m):
        trace = np.trace(a)
        if trace > 0:
            s = 2 * math.sqrt(trace + 1)
            out[i] = [0.25 * s, (a[2, 1] - a[1, 2]) / s, (a[0, 2] - a[2, 0]) / s, (a[1, 0] - a[0, 1]) / s]
        else:
            k = int(np.argmax(np.diag(a)))
            j, m = (k + 1) % 3, (k + 2) % 3
            s = 2 * math.sqrt(1 + a[k, k] - a[j, j] - a[m, m])
            q = np.empty(4)
            q[0] = (a[m, j] - a[j, m]) / s
            q[1 + k] = 0.25 * s
            q[1 + j] = (a[j, k] + a[k, j]) / s
            q[1 + m] = (a[m, k] + a[k, m]) / s
            out[i] = q
    out /= np.linalg.norm(out, axis=-1, keepdims=True)
    return out.reshape(*r.shape[:-2], 4)


def inverse_se3(pose: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = pose[:3, :3].T
    out[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return out


def pose_auc(gt_poses: list[np.ndarray], pred_poses: list[np.ndarray], max_threshold: int = 5) -> float:
    """AUC@5 over all view pairs i < j of the relative poses P_i⁻¹ P_j: error = max(rotation angle,
    translation direction angle), histogram with integer 1° bins (the last one closed), the mean of its
    cumulative sum, × 100."""
    r_err, t_err = [], []
    n = len(gt_poses)
    for i in range(n):
        for j in range(i + 1, n):
            rel_gt = inverse_se3(gt_poses[i]) @ gt_poses[j]
            rel_pred = inverse_se3(pred_poses[i]) @ pred_poses[j]
            r_err.append(rotation_angle_deg(rel_gt[:3, :3], rel_pred[:3, :3]))
            t_err.append(translation_angle_deg(rel_gt[:3, 3], rel_pred[:3, 3]))
    errors = np.maximum(np.array(r_err, dtype=np.float64), np.array(t_err, dtype=np.float64))
    histogram, _ = np.histogram(errors, bins=np.arange(max_threshold + 1))
    return float(np.mean(np.cumsum(histogram / len(errors))) * 100)


def ate(gt_centres: np.ndarray, pred_centres: np.ndarray) -> float:
    """MapAnything's ``pose_ate_rmse``: the GT camera centres rigidly aligned (Horn, no scale) onto the
    predicted ones; the **mean** per-camera distance (not an RMSE, despite the name)."""
    model, data = gt_centres.T.astype(np.float64), pred_centres.T.astype(np.float64)
    mz, dz = model - model.mean(1, keepdims=True), data - data.mean(1, keepdims=True)
    W = sum(np.outer(mz[:, c], dz[:, c]) for c in range(model.shape[1]))
    U, _, Vh = np.linalg.svd(W.T)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vh) < 0:
        S[2, 2] = -1
    rot = U @ S @ Vh
    trans = data.mean(1, keepdims=True) - rot @ model.mean(1, keepdims=True)
    return float(np.linalg.norm(rot @ model + trans - data, axis=0).mean())


def in_first_view(side: dict) -> dict:
    """``points`` and ``poses`` moved from the side's own world frame into its view 0's camera frame."""
    to_first = np.linalg.inv(side["poses"][0])
    return {**side, "points": [(p @ to_first[:3, :3].T + to_first[:3, 3]).astype(np.float32) for p in side["points"]],
            "poses": [to_first @ q for q in side["poses"]]}


def set_metrics(gt: dict, pred: dict) -> dict[str, float]:
    """One view set's metrics. ``gt`` and ``pred`` hold per view (lists), each in its own world frame:
    ``points`` (H×W×3, metric), ``points_cam`` (camera frame), ``rays`` (unit, camera frame), ``poses``
    (4×4 cam2world); ``gt["valid"]`` the GT-valid masks. Both sides are first moved into their own view
    0's camera frame, as the benchmark does."""
    gt, pred = in_first_view(gt), in_first_view(pred)
    valid = gt["valid"]
    gt_factor, pred_factor = avg_dis(gt["points"], valid), avg_dis(pred["points"], valid)
    out = {"metric_scale_abs_rel": abs(pred_factor - gt_factor) / gt_factor}
    per_view = {k: [] for k in ("pointmaps_abs_rel", "pointmaps_inlier_thres_103", "z_depth_abs_rel",
                                "z_depth_inlier_thres_103", "ray_dirs_err_deg")}
    for i, mask in enumerate(valid):
        p, g = pred["points"][i] / pred_factor, gt["points"][i] / gt_factor
        pz, gz = pred["points_cam"][i][..., 2:] / pred_factor, gt["points_cam"][i][..., 2:] / gt_factor
        per_view["pointmaps_abs_rel"].append(rel_error(p, g, mask))
        per_view["pointmaps_inlier_thres_103"].append(inlier_ratio(p, g, mask))
        per_view["z_depth_abs_rel"].append(rel_error(pz, gz, mask))
        per_view["z_depth_inlier_thres_103"].append(inlier_ratio(pz, gz, mask))
        per_view["ray_dirs_err_deg"].append(ray_error_deg(pred["rays"][i], gt["rays"][i]))
    out |= {k: float(np.mean(v)) for k, v in per_view.items()}
    if len(valid) > 1:
        scale = lambda poses, f: [np.block([[q[:3, :3], q[:3, 3:] / f], [q[3:]]]) for q in poses]
        gt_poses, pred_poses = scale(gt["poses"], gt_factor), scale(pred["poses"], pred_factor)
        out["pose_auc_5"] = pose_auc(gt_poses, pred_poses)
        out["pose_ate_rmse"] = ate(np.stack([q[:3, 3] for q in gt_poses]), np.stack([q[:3, 3] for q in pred_poses]))
    return out
