"""Parallel runs in the official editor with two job workers: two tabs each queue their own workflow
with the Run button; both run at once (the jobs API the queue panel reads lists both in progress);
each tab follows only its own job's progress; interrupting from one tab stops its job and leaves the
other running to its output, which that tab shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.editor.conftest import open_editor
from tests.polling import wait_for

pytestmark = pytest.mark.browser


def held_workflow(prefix: str, hold: str) -> dict:
    """A job that reports its first step, then waits while the file `hold` exists."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x808080},
        },
        "2": {
            "class_type": "StepSleep",
            "inputs": {"image": ["1", 0], "steps": 5, "step_ms": 10, "hold": hold},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


# This tab's view of the run: the editor's own execution store (pinia id "execution").
EXECUTION_JS = """() => {
  const s = document.getElementById('vue-app').__vue_app__.config.globalProperties.$pinia._s.get('execution');
  const p = s.nodeProgressStatesByJob || {};
  return { running: [...(s.runningJobIds || [])], active: s.activeJobId,
           progress: Object.fromEntries(Object.entries(p).map(([job, nodes]) =>
             [job, Math.max(0, ...Object.values(nodes).map(n => n.max ? n.value / n.max : 0))])) };
}"""


async def queue_from(page, workflow: dict, name: str) -> str:
    await page.evaluate("([p, n]) => window.app.loadApiJson(p, n)", [workflow, name])
    await page.wait_for_function("() => window.app.graph.nodes.length === 3")
    async with page.expect_response(
        lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST"
    ) as r:
        await page.click("[data-testid=queue-button]")
    answer = await (await r.value).json()
    return answer["prompt_id"]


async def test_two_tabs_run_in_parallel_with_their_own_progress(
    editor_server, browser, holds, artifacts_dir: Path
) -> None:
    page_a, log_a = await open_editor(browser, editor_server)
    page_b, log_b = await open_editor(browser, editor_server, page_a.context)
    # Both jobs run until the test releases them: B's once A's has been interrupted.
    job_a = await queue_from(page_a, held_workflow("tab_a", holds.make("a")), "a.json")
    job_b = await queue_from(page_b, held_workflow("tab_b", holds.make("b")), "b.json")

    async def both_running() -> bool:
        _, jobs = await editor_server.call("GET", "/api/jobs?status=in_progress,pending")
        return {j["id"] for j in jobs["jobs"] if j["status"] == "in_progress"} == {job_a, job_b}

    await wait_for(both_running, what="both jobs in progress at once")

    async def own_progress(page, own: str, other: str):
        state = await page.evaluate(EXECUTION_JS)
        if state["active"] == own and state["progress"].get(own, 0) > 0:
            assert other not in state["running"] and other not in state["progress"], state
            return state
        return None

    for page, own, other in ((page_a, job_a, job_b), (page_b, job_b, job_a)):
        await wait_for(lambda p=page, o=own, x=other: own_progress(p, o, x), what=f"{own}'s progress in its tab")
    # The queue panel's count of running jobs, in either tab.
    for page in (page_a, page_b):
        await page.wait_for_selector("text=2 active", timeout=30_000)
    await page_a.screenshot(path=str(artifacts_dir / "editor-parallel-a.png"))

    async with page_a.expect_request(lambda r: r.url.endswith("/api/interrupt")) as sent:
        await page_a.evaluate("() => window.app.extensionManager.command.execute('Comfy.Interrupt')")
    assert (await sent.value).post_data_json == {"prompt_id": job_a}

    async def status_of(job: str) -> str | None:
        status, detail = await editor_server.call("GET", f"/api/jobs/{job}")
        return detail["status"] if status == 200 else None

    await wait_for(lambda: _is(status_of(job_a), "cancelled"), what="tab A's job cancelled")
    assert await status_of(job_b) == "in_progress"  # B runs on
    holds.release("b")
    await wait_for(lambda: _is(status_of(job_b), "completed"), timeout=120, what="tab B's job to finish")
    images = await (
        await page_b.wait_for_function("() => window.app.nodeOutputs?.['3']?.images", timeout=30_000)
    ).json_value()
    assert images[0]["filename"].startswith("tab_b_")
    await page_b.screenshot(path=str(artifacts_dir / "editor-parallel-b.png"))
    for log in (log_a, log_b):
        assert log.problems() == [], log.problems()
    await page_a.context.close()


async def _is(value, expected) -> bool:
    return (await value) == expected
