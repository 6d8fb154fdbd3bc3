"""From the measured series to the figures the results document leads with, and the targets they meet.

Pure functions over dicts (no connection), so the document's headline
figures and the targets can be read, and tested, apart from the measuring.
"""

from __future__ import annotations

from typing import Any

from reserve.rollout import predictor

SCALING_KEYS = ("upgrade_lock_s", "downgrade_lock_s", "floor_new_s", "floor_old_s", "seed_order_s", "index_only_s",
                "upgrade_cpu_s", "downgrade_cpu_s", "floor_new_cpu_s", "floor_old_cpu_s")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def error_pct(predicted: float, actual: float | None) -> float | None:
    return None if not actual else round(100.0 * (predicted - actual) / actual, 1)


def probe_summary(series: dict[str, Any]) -> dict[str, Any]:
    before, after = series["probe_before"], series["probe_after"]
    out = {}
    for name in ("restaurant_scoped", "point"):
        out[name] = {"before_p50_ms": before[name]["p50_ms"], "before_p95_ms": before[name]["p95_ms"],
                     "after_p50_ms": after[name]["p50_ms"], "after_p95_ms": after[name]["p95_ms"],
                     "before_plan": before[name]["plan"], "after_plan": after[name]["plan"]}
    return out


def predictor_summary(series: dict[str, Any], swap: dict[str, Any]) -> dict[str, Any]:
    up, down = series["predict_upgrade"], series["predict_downgrade"]
    return {
        "predicted_s": up["predicted_s"], "actual_s": swap["upgrade_lock_s"],
        "error_pct": error_pct(up["predicted_s"], swap["upgrade_lock_s"]),
        "method": up["method"], "elapsed_s": up["elapsed_s"], "sample_build_s": up["sample_build_s"],
        "cpu_s": up.get("cpu_s"),
        "downgrade": {"predicted_s": down["predicted_s"], "actual_s": swap["downgrade_lock_s"],
                      "error_pct": error_pct(down["predicted_s"], swap["downgrade_lock_s"]),
                      "elapsed_s": down["elapsed_s"], "sample_build_s": down["sample_build_s"]},
        "calibration": predictor.CALIBRATION,
    }


def scaling_point(swap: dict[str, Any], pred: dict[str, Any], loaded: dict[str, Any],
                  online: dict[str, Any] | None = None) -> dict[str, Any]:
    online = online or {}
    return {"rows": swap["rows"], "live_rows": loaded["live_allocations"], **{k: swap[k] for k in SCALING_KEYS},
            "predicted_upgrade_s": pred["predicted_s"], "predicted_downgrade_s": pred["downgrade"]["predicted_s"],
            "predictor_error_pct": pred["error_pct"], "predictor_downgrade_error_pct": pred["downgrade"]["error_pct"],
            **{f"online_{k}": online.get(k) for k in ONLINE_SCALING_KEYS}}


ONLINE_SCALING_KEYS = ("upgrade_lock_s", "downgrade_lock_s", "upgrade_wall_s", "window_downgrade_wall_s",
                       "rebuild_downgrade_wall_s")


def online_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Issues 13, 14 and 20's targets for the online method, from the main run and the scaling points."""
    on = result["swap"].get("online")
    if not on:
        return {}
    out = {
        "online_upgrade_lock_s": {"value": on["upgrade_lock_s"], "limit": "<= 0.1 s",
                                  "met": at_most(on["upgrade_lock_s"], 0.1)},
        "online_downgrade_lock_s": {"value": on["downgrade_lock_s"], "limit": "<= 0.1 s (window and rebuild)",
                                    "met": at_most(on["downgrade_lock_s"], 0.1)},
        "online_background_over_floor_new": {"value": on["background_over_floor_new"], "limit": "<= 1.3",
                                             "met": at_most(on["background_over_floor_new"], 1.3)},
        "window_rollback_wall_s": {"value": on["window_downgrade_wall_s"], "limit": "<= 5 s",
                                   "met": at_most(on["window_downgrade_wall_s"], 5.0)},
    }
    points = [p for p in result.get("scaling") or [] if p.get("online_upgrade_lock_s")]
    if len(points) > 1:
        flat = ratio(points[-1]["online_upgrade_lock_s"], points[0]["online_upgrade_lock_s"])
        out["online_hold_largest_over_smallest"] = {"value": flat, "limit": "<= 2 (flat in size)",
                                                    "met": at_most(flat, 2.0)}
    writers = on.get("under_writers")
    if writers:
        held = max(writers["upgrade_lock_s"] or 99, writers["window_downgrade_lock_s"] or 99)
        out["online_lock_s_under_writers"] = {
            "value": held, "limit": f"<= 0.1 s, upgrade and window rollback, {writers['clients']} clients writing, "
                                    "no writer failed", "met": held <= 0.1 and not writers["errors"]}
        out["window_rollback_wall_s_under_writers"] = {"value": writers["window_downgrade_wall_s"], "limit": "<= 5 s",
                                                       "met": at_most(writers["window_downgrade_wall_s"], 5.0)}
    overhead = on.get("capture_overhead")
    if overhead:
        out["capture_confirm_p95_ratio"] = {"value": overhead["p95_ratio"], "limit": "<= 1.15 at 1 and 4 clients",
                                            "met": max(overhead["p95_ratio"].values()) <= 1.15}
    return out


def at_most(value: float | None, limit: float) -> bool:
    """A missing ratio never meets a target."""
    return (value or 99) <= limit


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target the benchmarks are held to: its value, its limit, whether it is met."""
    out = swap_targets(result["swap"], result["predictor"])
    rs = result.get("probe", {}).get("restaurant_scoped")
    if rs:
        out |= probe_targets(rs, result.get("samples", {}).get("seed_order_restaurant_p95_ms"))
    confirm = result.get("confirm")
    if confirm:
        worst = max(confirm["p95_ratio"].values())
        out["confirm_v12_over_v11_p95"] = {"value": confirm["p95_ratio"], "limit": "<= 1.15 at every concurrency",
                                           "met": worst <= 1.15}
    return out


def swap_targets(swap: dict[str, Any], pred: dict[str, Any]) -> dict[str, Any]:
    upgrade = ratio(swap["upgrade_lock_s"], swap["floor_new_s"])
    downgrade = ratio(swap["downgrade_lock_s"], swap["floor_old_s"])
    key_order = ratio(swap["floor_new_s"], swap["seed_order_s"])
    error = pred.get("error_pct")
    return {
        "upgrade_lock_over_floor_new": {"value": upgrade, "limit": "<= 1.10", "met": at_most(upgrade, 1.10)},
        "downgrade_lock_over_floor_old": {"value": downgrade, "limit": "<= 1.10", "met": at_most(downgrade, 1.10)},
        "floor_new_over_seed_order": {"value": key_order, "limit": "<= 0.70", "met": at_most(key_order, 0.70)},
        "predictor_error": {"value": error, "limit": "within +-25%", "met": error is not None and abs(error) <= 25},
    }


def probe_targets(rs: dict[str, Any], seed_p95: float | None) -> dict[str, Any]:
    below_seed = seed_p95 is None or rs["after_p95_ms"] < seed_p95
    gain = ratio(rs["before_p95_ms"], rs["after_p95_ms"])
    return {
        "restaurant_probe_after_p95": {"value": rs["after_p95_ms"], "limit": "<= 1.0 ms and below the seed order's",
                                       "seed_order_p95_ms": seed_p95, "met": rs["after_p95_ms"] <= 1.0 and below_seed},
        "restaurant_probe_gain": {"value": gain, "limit": ">= 50x", "met": (gain or 0) >= 50},
    }
