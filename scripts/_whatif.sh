# Sourced by scripts/serve and scripts/retrain: how a synthetic `default` is built so that
# what-if requests work on it. It is an effect checkpoint (`--task effect`: the risk model
# plus the what-if networks saved beside it), and those networks are fitted on a treated
# cohort: one where a clinician-like policy of confounding strength 3 chose each stay's
# plan, with the counterfactual outcomes their intervals are calibrated on. Needs $PY.
WHATIF_CONFOUNDING=3

synthesize_treated() {  # $1: patients, $2: seed, $3: output directory
  "$PY" -m training.synthesize --patients "$1" --seed "$2" --out "$3" \
    --confounding "$WHATIF_CONFOUNDING" --no-summary
}

train_whatif() {  # training.train flags (--data a treated cohort, --name, ...)
  "$PY" -m training.train --task effect "$@"
}
