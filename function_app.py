"""Azure Functions entry point: a timer (its schedule is DETECTOR_SCHEDULE) that runs the detector.

Trigger only; the work is in detector/.
"""

import json
import logging
from datetime import UTC, datetime

import azure.functions as func

app = func.FunctionApp()
# The Azure SDKs log every HTTP request and its headers at INFO: keep Application Insights for our own lines.
logging.getLogger("azure").setLevel(logging.WARNING)
logging.getLogger("urllib3").setLevel(logging.WARNING)  # its DEBUG lines carry URLs (a webhook URL is a secret)


@app.timer_trigger(schedule="%DETECTOR_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def detect(timer: func.TimerRequest) -> None:
    """Run every configured rule over each whole window since its checkpoint and deliver the findings."""
    # Imported here, not at module level, to keep the host's indexing of this file fast.
    from detector.config import Settings
    from detector.runner import run_scheduled

    if timer.past_due:
        # Nothing is lost: the run starts at the checkpoint and catches up every missed window.
        logging.warning("detector: timer is past due; catching up from the checkpoint")
    summary = run_scheduled(Settings.from_env(), now=datetime.now(UTC))
    logging.info("detector.summary %s", json.dumps(summary.to_json()))
    if not summary.ok:
        # Failing the invocation makes the failure visible in Application Insights and its alerts.
        raise RuntimeError(f"detector: run failed: {summary.errors or ''} {summary.delivery_errors or ''}".strip())
