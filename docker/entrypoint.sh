#!/bin/sh
# The image's entrypoint: one image serves the API and runs the training CLI.
#   serve                  the service (python -m app; VITALCAST_* settings from the environment)
#   train ARGS...          python -m training.train ARGS...
#   synthesize ARGS...     python -m training.synthesize ARGS...
#   evaluate ARGS...       python -m training.evaluate ARGS...
#   import-physionet ARGS  python -m training.import_physionet ARGS...
#   retrain [TRAIN ARGS]   synthesize a treated cohort into $VITALCAST_DATA_DIR unless it
#                          holds data, train $VITALCAST_DEFAULT_MODEL into $VITALCAST_MODEL_DIR
#                          (with what-if networks when the data hold counterfactuals, as a
#                          synthesized cohort does), then ask the api at $VITALCAST_RELOAD_URL
#                          (if set) to reload
#   anything else          run as given (e.g. `python -m training.train --help`, `sh`)
set -eu
here="$(dirname "$0")"

case "${1:-serve}" in
  serve)
    exec python -m app ;;
  train)
    shift; exec python -m training.train "$@" ;;
  synthesize)
    shift; exec python -m training.synthesize "$@" ;;
  evaluate)
    shift; exec python -m training.evaluate "$@" ;;
  import-physionet)
    shift; exec python -m training.import_physionet "$@" ;;
  retrain)
    shift
    data="${VITALCAST_DATA_DIR:-/data}"
    models="${VITALCAST_MODEL_DIR:-/models}"
    if [ ! -f "$data/observations.parquet" ]; then
      # Treated (a clinician-like policy, confounding 3, as scripts/serve's default), so that
      # the default keeps answering what-if plans after a retrain.
      echo "== no data in $data: synthesizing ${VITALCAST_SYNTH_PATIENTS:-2000} treated stays"
      python -m training.synthesize --patients "${VITALCAST_SYNTH_PATIENTS:-2000}" \
        --seed "${VITALCAST_SYNTH_SEED:-0}" --out "$data" --confounding 3 --no-summary
    fi
    task=risk
    if [ -f "$data/counterfactuals.parquet" ]; then
      task=effect  # the risk model plus the what-if networks beside it
    else
      echo "== $data holds no counterfactuals: a risk model without what-if networks"
    fi
    # Defaults first, so that flags given after `retrain` win (argparse keeps the last).
    python -m training.train --data "$data" --model-dir "$models" --task "$task" \
      --name "${VITALCAST_DEFAULT_MODEL:-default}" "$@"
    if [ -n "${VITALCAST_RELOAD_URL:-}" ]; then
      exec python "$here/reload.py"
    fi
    echo "== published into $models; VITALCAST_RELOAD_URL is unset, so the api loads it" \
         "on its next start or POST /v1/models/reload"
    ;;
  *)
    exec "$@" ;;
esac
