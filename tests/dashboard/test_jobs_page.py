"""The dashboard's jobs panel in headless Chromium against a real server with real job workers (two, so
two jobs run at once): jobs submitted from two pages (two tabs, two client ids) both show in both,
each marked with who started it; each has its own progress, step and time left; an interrupt from a
page stops that job and not the other, which goes on to its output; a pending job is cancelled; the
tab's title and favicon follow the running jobs; a task is followed to its result in a banner."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import Holds, Server, open_dashboard
from tests.polling import wait_for

pytestmark = pytest.mark.browser


def slow_prompt(steps: int, step_ms: int, prefix: str, hold: str = "") -> dict[str, Any]:
    """With `hold` (a file from the `holds` fixture) the job goes a tenth of its steps (the whole
    job's progress past 0.34), then waits until the test releases it."""
    step = {"image": ["1", 0], "steps": steps, "step_ms": step_ms}
    if hold:
        step.update(hold=hold, hold_at=max(1, steps // 10))
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0x2050A0},
        },
        "2": {"class_type": "StepSleep", "inputs": step},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


JOB_JS = """(id) => {
  const j = window.__dashboard.store.get(id);
  return j && { status: j.status, progress: j.progress, step: j.step, eta: j.etaS, mine: window.__dashboard.store.isMine(j),
                clientId: j.clientId };
}"""


async def submit_from_page(page: Any, prompt: dict[str, Any]) -> str:
    """Pastes `prompt` into the page's form and queues it; returns the new job's prompt id."""
    before = set(await page.evaluate("() => [...window.__dashboard.store.jobs.keys()]"))
    await page.fill("[data-testid=workflow-text]", json.dumps(prompt))
    await page.click("[data-testid=submit-job]")
    handle = await page.wait_for_function(
        """(before) => {
          const s = window.__dashboard.store;
          const mine = [...s.jobs.values()].filter(j => s.isMine(j) && !before.includes(j.id));
          return mine.length ? mine[0].id : null;
        }""",
        arg=sorted(before),
    )
    return await handle.json_value()


async def history_status(server: Server, prompt_id: str) -> str | None:
    status, history = await server.call("GET", f"/history/{prompt_id}")
    entry = history.get(prompt_id) if status == 200 else None
    if not entry:
        return None
    events = [m[0] for m in entry["status"]["messages"]]
    if "execution_interrupted" in events:
        return "interrupted"
    return entry["status"]["status_str"]


async def test_two_tabs_progress_interrupt_cancel_and_outputs(
    server: Server, browser, holds: Holds, artifacts_dir: Path
) -> None:
    page_a, log_a = await open_dashboard(browser, server)
    page_b, log_b = await open_dashboard(browser, server)
    client_a = await page_a.evaluate("() => window.__dashboard.clientId")
    client_b = await page_b.evaluate("() => window.__dashboard.clientId")
    assert client_a != client_b
    await page_a.wait_for_function("() => window.__dashboard.feed.jobsPresent === true")

    # Both run until released: A after B has been interrupted; B never.
    job_a = await submit_from_page(page_a, slow_prompt(40, 10, "tab-a", holds.make("a")))
    job_b = await submit_from_page(page_b, slow_prompt(400, 10, "tab-b", holds.make("b")))

    # Both pages see both jobs running, each with its own progress, and know whose each is.
    for page in (page_a, page_b):
        for job in (job_a, job_b):
            await page.wait_for_function(
                "(id) => { const j = window.__dashboard.store.get(id); return j && j.status === 'running' && j.progress > 0.34; }",
                arg=job,
                timeout=60_000,
            )
    seen_a = {job: await page_a.evaluate(JOB_JS, job) for job in (job_a, job_b)}
    seen_b = {job: await page_b.evaluate(JOB_JS, job) for job in (job_a, job_b)}
    assert seen_a[job_a]["mine"] and not seen_a[job_b]["mine"]
    assert seen_b[job_b]["mine"] and not seen_b[job_a]["mine"]
    assert seen_a[job_b]["clientId"] == client_b and seen_b[job_a]["clientId"] == client_a
    assert await page_a.text_content(f'[data-prompt-id="{job_a}"] [data-testid=job-owner]') == "this tab"
    assert await page_a.text_content(f'[data-prompt-id="{job_b}"] [data-testid=job-owner]') != "this tab"
    assert await page_b.text_content(f'[data-prompt-id="{job_b}"] [data-testid=job-owner]') == "this tab"

    # Each job's own step in words (with its step count). No time left yet: nothing of this shape
    # has run here before, and a guess from the progress fraction jumped about.
    card_a = page_a.locator(f'[data-prompt-id="{job_a}"]')
    assert await card_a.locator("[data-testid=job-eta]").count() == 0
    assert (await page_a.evaluate(JOB_JS, job_a))["eta"] is None
    step = await card_a.locator("[data-testid=job-step]").text_content()
    assert step.startswith("Step sleep (node 2) · step ") and step.endswith("/40"), step
    step_b = await page_a.locator(f'[data-prompt-id="{job_b}"] [data-testid=job-step]').text_content()
    assert step_b.endswith("/400"), step_b

    # A third job waits (both workers are busy) and is cancelled from the page.
    job_c = await submit_from_page(page_a, slow_prompt(5, 10, "tab-c"))
    card_c = page_a.locator(f'[data-prompt-id="{job_c}"]')
    await card_c.locator("[data-testid=cancel-job]").wait_for()
    assert (await page_a.evaluate(JOB_JS, job_c))["status"] == "pending"

    # The tab shows the running jobs: count and aggregate progress in the title and the favicon.
    title = await page_a.title()
    assert title.startswith("[") and "2 jobs running" in title, title
    assert await page_a.get_attribute("link[rel=icon]", "data-running") == "2"
    await page_a.screenshot(path=str(artifacts_dir / "dashboard-jobs-running-tab-a.png"))
    await page_b.screenshot(path=str(artifacts_dir / "dashboard-jobs-running-tab-b.png"))

    await card_c.locator("[data-testid=cancel-job]").click()
    await page_a.wait_for_function(
        "(id) => window.__dashboard.store.get(id).status === 'cancelled'", arg=job_c
    )
    await page_b.wait_for_function(
        "(id) => window.__dashboard.store.get(id)?.status === 'cancelled'", arg=job_c
    )
    status, queue = await server.call("GET", "/queue")
    assert job_c not in json.dumps(queue)

    # Interrupt B's job from tab B: that job stops, A's goes on.
    progress_a = (await page_a.evaluate(JOB_JS, job_a))["progress"]
    await page_b.locator(f'[data-prompt-id="{job_b}"] [data-testid=interrupt-job]').click()
    await wait_for(lambda: history_status(server, job_b), what="job B to end")
    assert await history_status(server, job_b) == "interrupted"
    for page in (page_a, page_b):
        await page.wait_for_function(
            "(id) => window.__dashboard.store.get(id).status === 'interrupted'", arg=job_b, timeout=30_000
        )
    assert (await page_a.evaluate(JOB_JS, job_a))["status"] == "running", "interrupting B stopped A"
    holds.release("a")

    # A finishes with its output, shown on both pages.
    await wait_for(lambda: history_status(server, job_a), what="job A to finish")
    assert await history_status(server, job_a) == "success"
    assert (await page_a.evaluate(JOB_JS, job_a))["progress"] >= progress_a
    for page in (page_a, page_b):
        image = page.locator(f'[data-prompt-id="{job_a}"] [data-testid=job-output-image]')
        await image.wait_for(timeout=30_000)
        await page.wait_for_function(
            "(el) => el.complete && el.naturalWidth === 64 && el.naturalHeight === 48",
            arg=await image.element_handle(),
        )
        assert await page.locator(f'[data-prompt-id="{job_b}"] [data-testid=job-output-image]').count() == 0
    src = await page_a.get_attribute(f'[data-prompt-id="{job_a}"] [data-testid=job-output-image]', "src")
    assert "tab-a" in src and "type=output" in src, src
    await page_a.wait_for_function("() => document.title === 'comfystream'")

    # The same prompt again (another prefix): now its time left is known, from A's measured node
    # times, and it only goes down as the job runs.
    measured = await page_a.evaluate(
        "(id) => Object.values(window.__dashboard.store.get(id).nodeTimes).reduce((t, n) => t + n.s, 0)",
        job_a,
    )
    # (One millisecond more a step: the same inputs would be taken from the worker's cache, by
    # input signature as ComfyUI does, and the job would end before any estimate.) It runs until
    # the estimate has been sampled.
    job_d = await submit_from_page(page_a, slow_prompt(40, 11, "tab-d", holds.make("d")))
    card_d = page_a.locator(f'[data-prompt-id="{job_d}"]')
    await card_d.locator("[data-testid=job-eta]").wait_for(timeout=60_000)
    etas = []
    while (seen := await page_a.evaluate(JOB_JS, job_d))["status"] == "running" and len(etas) < 8:
        if seen["eta"] is not None:
            etas.append(seen["eta"])
        await asyncio.sleep(0.25)  # samples of the estimate, not a wait for something
    assert etas and etas[0] <= measured + 0.01, (etas, measured)
    assert all(later <= earlier for earlier, later in zip(etas, etas[1:], strict=False)), etas
    holds.release("d")
    await wait_for(lambda: history_status(server, job_d), what="job D to finish")

    # Stop all running (it asks once more): every running job is interrupted, whoever started it.
    more = [
        await submit_from_page(page_b, slow_prompt(400, 10, f"all-{i}", holds.make("all"))) for i in range(2)
    ]
    for job in more:
        await page_a.wait_for_function(
            "(id) => window.__dashboard.store.get(id)?.status === 'running'", arg=job, timeout=30_000
        )
    stop_all = page_a.locator("[data-testid=stop-all-jobs]")
    await stop_all.click()
    await stop_all.click()
    for job in more:
        await wait_for(lambda job=job: history_status(server, job), what=f"job {job} to end")
        assert await history_status(server, job) == "interrupted"
    await page_a.wait_for_function("() => document.title === 'comfystream'")
    await asyncio.sleep(0.5)  # let the bars' transitions settle before the picture
    await page_a.screenshot(path=str(artifacts_dir / "dashboard-jobs-finished.png"))

    assert log_a.errors == [] and log_b.errors == [], (log_a.errors, log_b.errors)


@pytest.mark.server_config(job_workers=1)
async def test_task_banner_follows_a_task_to_its_result(
    server: Server, browser, holds: Holds, artifacts_dir: Path
) -> None:
    page, log = await open_dashboard(browser, server)
    await page.wait_for_function("() => window.__dashboard.feed.jobsPresent === true")
    # The task runs until the banner has shown it in progress.
    await page.fill(
        "[data-testid=workflow-text]", json.dumps(slow_prompt(25, 10, "task", holds.make("task")))
    )
    await page.check("[data-testid=as-task]")
    await page.click("[data-testid=submit-job]")
    banner = page.locator("[data-testid=progress-banner]")
    await banner.wait_for()
    await page.wait_for_function(
        "() => { const b = document.querySelector('[data-testid=progress-banner]'); return b && b.dataset.status === 'in-progress'"
        " && /Step|Sampling|step/i.test(b.textContent); }",
        timeout=60_000,
    )
    await page.screenshot(path=str(artifacts_dir / "dashboard-task-banner.png"))
    holds.release("task")
    await page.wait_for_function(
        "() => document.querySelector('[data-testid=progress-banner]').dataset.status === 'completed'",
        timeout=60_000,
    )
    image = banner.locator("[data-testid=banner-result] img")
    await image.wait_for()
    await page.wait_for_function(
        "(el) => el.complete && el.naturalWidth === 64", arg=await image.element_handle()
    )
    assert await banner.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    task_id = await banner.get_attribute("data-task-id")
    # The task's job is in the list too, as this tab's.
    mine = await page.evaluate(
        "() => [...window.__dashboard.store.jobs.values()].filter(j => window.__dashboard.store.isMine(j)).map(j => [j.taskId, j.status])"
    )
    assert mine == [[task_id, "success"]], mine
    await asyncio.sleep(0.5)  # let the bars' transitions settle before the picture
    await page.screenshot(path=str(artifacts_dir / "dashboard-task-complete.png"))
    assert log.errors == [], log.errors


@pytest.mark.server_config(job_workers=1)
async def test_sse_manager_backs_off_exponentially_and_recovers(server: Server, browser) -> None:
    """The page's SSEManager against the real /progress endpoint: a connection that fails is retried
    with doubling delays; once it reaches the task, the task is followed to its end."""
    page, log = await open_dashboard(browser, server)
    status, task = await server.call(
        "POST", "/tasks", json={"prompt": slow_prompt(3, 10, "sse"), "client_id": "someone-else"}
    )
    assert status == 200, task
    outcome = await page.evaluate(
        """async (taskId) => {
          const { SSEManager } = await import('/dashboard/sse-manager.js');
          let connects = 0;
          // The first three connections go to a URL that fails; then to the task's own.
          const manager = new SSEManager({ baseDelayMs: 40, maxDelayMs: 1000, maxRetries: 6,
            urlFor: (id) => (++connects <= 3 ? '/progress/no-such-task' : `/progress/${id}`) });
          const delays = [];
          return await new Promise((resolve) => {
            manager.subscribe(taskId, {
              onConnection: (state, info) => state === 'reconnecting' && delays.push(info.delayMs),
              onComplete: (data) => resolve({ status: data.status, delays, connects, left: manager.activeTaskIds.length }),
              onError: (data) => resolve({ status: 'error', error: data, delays, connects }),
            });
          });
        }""",
        task["taskId"],
    )
    assert outcome["status"] == "completed", outcome
    assert outcome["connects"] == 4 and outcome["left"] == 0
    delays = outcome["delays"]
    assert len(delays) == 3
    for attempt, delay in enumerate(delays):  # 40, 80, 160 ms, each +-20 %
        assert 0.8 * 40 * 2**attempt <= delay <= 1.2 * 40 * 2**attempt, delays
    # The provoked failures are the only errors the page logged.
    assert log.unexpected((404, "/progress/no-such-task")) == [], log.errors

    # And a task that cannot be reached is given up after maxRetries, with an error.
    gave_up = await page.evaluate(
        """async () => {
          const { SSEManager } = await import('/dashboard/sse-manager.js');
          const manager = new SSEManager({ baseDelayMs: 10, maxRetries: 2, urlFor: () => '/progress/no-such-task' });
          return await new Promise((resolve) => manager.subscribe('x', { onError: (d) => resolve(d.error.message) }));
        }"""
    )
    assert "Lost the connection" in gave_up
