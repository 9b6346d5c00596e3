"""Bulk scoring speed: the batch endpoint and the evaluation path against the raw forward pass.

    python -m benchmarks.scoring [--patients 10000] [--batch 256] [--http-patients N]
                                 [--threads 1] [--rounds 3] [--in-flight 3] [--seed 7]
                                 [--contributions]

A synthetic cohort (training.synthesize) is scored with the default model (benchmarks._server:
bi-LSTM at the default sizes, random weights) three ways, each timed on its own:

1. raw forward: the network on ready tensors (tensorised beforehand, untimed), batches of
   `--batch`, eval mode under torch.inference_mode: the model's own limit (the traced graph
   the service runs, models/traced.py, is timed alone beside it: the same speed);
2. evaluation path: `models.predict.score(ckpt, observations, patients)` on DataFrames
   (tensorise + forward + calibration, no explanation), as training/evaluate scores;
3. batch endpoint: `POST /v1/predict/batch` on a real server (`python -m app`, uvicorn, one
   worker, loopback), batches of `--batch` patients, JSON in and JSON out end to end:
   request bodies are encoded before the clock starts, the clock runs from the first byte
   sent to the last response parsed; one request at a time on one connection, then
   `--in-flight` requests at a time on as many connections, as a bulk client would send
   them (the server parses one body while it scores another); the client is the standard
   library's http.client with keep-alive connections, and it parses every response (orjson)
   to check that each patient has an answer. Responses
   carry risk, prognosis, NEWS2, warnings and attention; `?contributions=false` leaves out
   the integrated-gradients contributions (several forward and backward passes per patient,
   which no forward-pass budget covers) unless `--contributions`. The server's prediction
   cache is off: every patient is scored. `--http-patients` scores only the first N
   patients this way (default: all). Each patient's observations are sent as a list of
   rows, then as the column form {"time": [...], "variable": [...], "value": [...]} (the
   same rows, a body ~40 % the size).

The endpoint's ratio is taken against the raw forward pass of the same patients timed just
before and just after it (their mean time): other processes' load on the machine falls on
both alike. Each configuration (form, requests in flight) runs `--rounds` rounds, each the
whole cohort sent without a pause, as a bulk client sends it (the pipeline fills once per
round, not once per few batches); the figure is the median of the rounds' ratios, printed
with their range. The first raw figure, one pass over the cohort before anything else, is
printed too, and beside each ratio the ratio to the traced graph the service runs
(models/traced.py), timed the same way.

Prints patients/s for each and the ratios to the raw forward pass (target for the batch
endpoint: >= 0.5). torch runs with `--threads` intra-op threads (the server's default, 1).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import torch

from benchmarks._server import API_KEY, publish_default_set, serve, synthetic_cohort
from models.checkpoint import latest_version_dir, load_checkpoint
from models.features import tensorise
from models.predict import score
from models.traced import trace_for_inference, traced_forward


def request_bodies(observations: pd.DataFrame, patients: pd.DataFrame, batch: int,
                   columns: bool = False) -> list[tuple[int, bytes]]:
    """(patients, JSON body) per batch request: hours since admission, the cohort's statics;
    each patient's observations as a list of rows, or with `columns` as the column form
    {"time": [...], "variable": [...], "value": [...]}."""
    obs = observations.sort_values(["patient_id", "time_hours"], kind="stable")
    ids = obs["patient_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    times = obs["time_hours"].to_numpy().tolist()
    names = obs["variable"].astype(str).to_numpy().tolist()
    values = obs["value"].to_numpy().tolist()
    statics = patients.set_index(patients["patient_id"].astype(str))
    requests: list[dict[str, Any]] = []
    for s, e in zip(starts, ends, strict=True):
        pid = str(ids[s])
        row = statics.loc[pid]
        static = {k: (float(row[k]) if k != "sex" else str(row[k]))
                  for k in ("age", "sex", "weight", "height") if pd.notna(row[k])}
        rows: Any = ({"time": times[s:e], "variable": names[s:e], "value": values[s:e]}
                     if columns else [{"time": times[i], "variable": names[i],
                                       "value": values[i]} for i in range(s, e)])
        requests.append({"patient_id": pid, "static": static, "observations": rows})
    return [(len(requests[i:i + batch]), orjson.dumps({"patients": requests[i:i + batch]}))
            for i in range(0, len(requests), batch)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--http-patients", type=int, default=0, help="0 = all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per configuration, each the raw pass, the endpoint, the raw pass")
    ap.add_argument("--in-flight", type=int, default=3,
                    help="requests sent at once (besides one at a time), as a bulk client would")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--contributions", action="store_true",
                    help="ask the batch endpoint for the IG contributions too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    obs, patients = synthetic_cohort(args.patients, args.seed)
    n = patients["patient_id"].nunique()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} cores")
    print(f"cohort: {n:,} synthetic patients, {len(obs):,} observations "
          f"({len(obs) / n:.0f} per patient); batches of {args.batch}; "
          f"{args.threads} torch thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        publish_default_set(model_dir)
        version = latest_version_dir(model_dir, "default")
        if version is None:
            raise SystemExit("no default model was published")
        ckpt = load_checkpoint(version)
        print(f"model: default ({ckpt.config.arch}, bidirectional={ckpt.config.bidirectional}, "
              f"hidden {ckpt.config.hidden}, {len(ckpt.normalizer.features)} features)")

        # 1. raw forward pass on ready tensors
        tensors = tensorise(obs, ckpt.normalizer, ckpt.grid, patients=patients)
        x = torch.from_numpy(tensors.inputs())
        static = torch.from_numpy(tensors.static)
        step_mask = torch.from_numpy(tensors.step_mask)
        model = ckpt.model.eval()

        def forward(start: int, stop: int, net: Any = None) -> float:
            """Seconds for the raw forward passes of patients start..stop, in batches, by
            the module (or `net`: the traced graph)."""
            net = model if net is None else net
            t0 = time.perf_counter()
            with torch.inference_mode():
                for i in range(start, stop, args.batch):
                    sl = slice(i, min(i + args.batch, stop))
                    net(x[sl], static[sl], step_mask[sl])
            return time.perf_counter() - t0

        forward(0, args.batch)  # warm-up
        raw_s = forward(0, n)
        raw = n / raw_s
        print(f"raw forward pass:     {raw:9,.0f} patients/s  ({raw_s:.2f} s)")

        # 2. evaluation path on DataFrames
        t0 = time.perf_counter()
        preds = score(ckpt, obs, patients, batch_size=args.batch)
        eval_s = time.perf_counter() - t0
        if len(preds) != n:
            raise SystemExit(f"score returned {len(preds)} predictions for {n} patients")
        evaluation = n / eval_s
        print(f"evaluation path:      {evaluation:9,.0f} patients/s  ({eval_s:.2f} s)  "
              f"ratio to raw {evaluation / raw:.2f}")

        # The service scores through a traced graph of the same forward pass (models/traced.py:
        # the same outputs, no waits for the GIL between operators; it rolls every batch's
        # spans, the module only a batch with a stay first observed after bin 0). The
        # baseline stays the module: the model's own forward pass.
        cfg = ckpt.config
        trace_for_inference(model, ckpt.grid.n_steps, cfg.n_inputs, cfg.n_static)
        # (no graph: the service scores with the module, and so is it timed)
        graph = traced_forward(model)
        graph_name = "traced graph" if graph is not None else "module (no traced graph)"
        if graph is not None:
            traced_s = forward(0, n, graph)
            again_s = forward(0, n)
            print(f"traced graph alone:   {n / traced_s:9,.0f} patients/s  ({traced_s:.2f} s; the "
                  f"module again: {n / again_s:,.0f} patients/s)")

        # 3. batch endpoint, JSON end to end, observations as rows then as columns
        http_n = args.http_patients or n
        keep = set(sorted(patients["patient_id"].astype(str))[:http_n])
        mine = (obs[obs["patient_id"].isin(keep)], patients[patients["patient_id"].isin(keep)])
        forms = {form: request_bodies(*mine, args.batch, columns=form == "columns")
                 for form in ("rows", "columns")}
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        largest = max(len(b) for bodies in forms.values() for _, b in bodies)
        env = {"VITALCAST_MAX_BODY_BYTES": str(largest + 1024),
               "VITALCAST_MAX_BATCH": str(args.batch), "VITALCAST_CACHE_ENTRIES": "0"}
        contributions = "true" if args.contributions else "false"
        print(f"contributions: {contributions}")
        path = f"/v1/predict/batch?contributions={contributions}"
        with (serve(model_dir, Path(tmp) / "server.log", env=env) as server,
              ThreadPoolExecutor(args.in_flight) as pool):
            # One keep-alive connection per client thread, with the standard library's
            # client: it spends ~20 % less of the machine's CPU per batch than httpx, CPU
            # the server would otherwise share with it.
            local, opened = threading.local(), []
            host, port = server.base_url.removeprefix("http://").rsplit(":", 1)

            def send(body: bytes, fresh: bool = False) -> tuple[int, bytes]:
                if fresh or (conn := getattr(local, "conn", None)) is None:
                    conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=600)
                    opened.append(conn)
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                return r.status, r.read()

            def post(request: tuple[int, bytes]) -> int:
                """Send one batch; the number of patients it scored."""
                count, body = request
                try:
                    status, content = send(body)
                except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                    # uvicorn closes a connection left idle for 5 s (while the other
                    # phases run): the request never reached it, send it on a new one
                    status, content = send(body, fresh=True)
                if status != 200:
                    raise SystemExit(f"batch answered {status}: {content[:300]!r}")
                results = orjson.loads(content)["results"]
                if len(results) != count:
                    raise SystemExit(f"{len(results)} results for {count} patients")
                return count

            post(forms["rows"][0])  # warm-up
            for (form, bodies), in_flight in itertools.product(forms.items(),
                                                              sorted({1, args.in_flight})):
                print(f"observations as {form}, {in_flight} request(s) in flight "
                      f"({sum(len(b) for _, b in bodies) / 1e6:.0f} MB of JSON in):")
                ratios, to_graph = [], []
                for _ in range(args.rounds):
                    # The raw pass just before and just after the endpoint's: both see the
                    # same load from other processes on the machine.
                    raw_s = forward(0, http_n)
                    graph_s = forward(0, http_n, graph)
                    t0 = time.perf_counter()
                    scored = sum(pool.map(post, bodies) if in_flight > 1 else map(post, bodies))
                    http_s = time.perf_counter() - t0
                    graph_s = (graph_s + forward(0, http_n, graph)) / 2
                    raw_s = (raw_s + forward(0, http_n)) / 2
                    endpoint, raw_alongside = scored / http_s, scored / raw_s
                    ratios.append(endpoint / raw_alongside)
                    to_graph.append(endpoint * graph_s / scored)
                    print(f"  batch endpoint (HTTP): {endpoint:7,.0f} patients/s ({http_s:.2f} s "
                          f"for {scored:,}); raw forward pass around it {raw_alongside:7,.0f}, "
                          f"{graph_name} {scored / graph_s:7,.0f}; ratio {ratios[-1]:.2f}")
                ratio = statistics.median(ratios)
                print(f"  median ratio to the raw forward pass {ratio:.2f} "
                      f"({min(ratios):.2f}-{max(ratios):.2f}; to the {graph_name} "
                      f"{statistics.median(to_graph):.2f}) (target >= 0.5: "
                      f"{'PASS' if ratio >= 0.5 else 'FAIL'})")
                print(f"  server RSS {server.rss_mib():.0f} MiB ({server.rss_mib('RssAnon'):.0f} "
                      f"its own, RssAnon), peak so far {server.rss_mib('VmHWM'):.0f} MiB")
            print(f"server RSS {server.rss_mib():.0f} MiB ({server.rss_mib('RssAnon'):.0f} its "
                  f"own; peak {server.rss_mib('VmHWM'):.0f} MiB)")
            for conn in opened:
                conn.close()
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
