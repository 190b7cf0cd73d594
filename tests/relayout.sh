#!/usr/bin/env bash
# Move the tests into folders that mirror the package (tests/sources/, tests/sinks/, tests/state/,
# tests/logic/), fix the imports between test modules, then delete this script. Run once, from the
# repository root, on a clean tree, after every branch that edits tests/ is merged:
#     bash tests/relayout.sh && make test
# It checks every move before making any: a missing source or an existing target stops it unchanged.
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
if [ -n "$(git status --porcelain -- tests)" ]; then
    echo "relayout: tests/ has uncommitted changes; commit or stash them first" >&2
    exit 1
fi

# old path (under tests/) -> new path (under tests/)
MOVES=(
    "test_sources.py                sources/test_sources.py"
    "test_candidate_pushdown.py     sources/test_candidates.py"
    "test_loganalytics.py           sources/test_loganalytics.py"
    "test_loganalytics_query.py     sources/test_kql_query.py"
    "test_sinks_core.py             sinks/test_sinks.py"
    "test_sink_ingestion.py         sinks/test_ingestion.py"
    "test_sink_isolation.py         sinks/test_isolation.py"
    "test_sink_sentinel.py          sinks/test_sentinel.py"
    "test_sink_webhook.py           sinks/test_webhook.py"
    "test_stdout.py                 sinks/test_stdout.py"
    "test_presentation.py           sinks/test_presentation.py"
    "test_state_stores.py           state/test_stores.py"
    "test_state_validation.py       state/test_validation.py"
    "test_leases.py                 state/test_leases.py"
    "test_parity_with_kql.py        logic/test_high_port_count_parity.py"
    "test_parity_failed_logons.py   logic/test_failed_logons_parity.py"
    "test_parity_exchange_rules.py  logic/test_exchange_rules_parity.py"
    "test_extra_rule.py             logic/test_extra_rule.py"
    "test_runs.py                   test_runner.py"
    "test_backfill_and_scheduled.py test_runner_backfill_and_scheduled.py"
)

problems=0
for move in "${MOVES[@]}"; do
    read -r old new <<<"$move"
    if [ ! -f "tests/$old" ]; then
        echo "relayout: tests/$old is missing (renamed or already moved?); nothing was changed" >&2
        problems=1
    fi
    if [ -e "tests/$new" ]; then
        echo "relayout: tests/$new already exists; nothing was changed" >&2
        problems=1
    fi
done
[ "$problems" -eq 0 ] || exit 1

for folder in sources sinks state logic; do
    mkdir -p "tests/$folder"
    if [ ! -f "tests/$folder/__init__.py" ]; then
        : >"tests/$folder/__init__.py"
        git add "tests/$folder/__init__.py"
    fi
done

# Module names before and after, for the imports between test modules (`from tests.test_runs import ...`,
# and the same inside the Python code some tests hand to a child interpreter).
sed_args=()
for move in "${MOVES[@]}"; do
    read -r old new <<<"$move"
    git mv "tests/$old" "tests/$new"
    old_module="tests.${old%.py}"
    new_module="tests.$(echo "${new%.py}" | tr / .)"
    sed_args+=(-e "s/\\b${old_module//./\\.}\\b/${new_module}/g")
done
git ls-files -z -- 'tests/*.py' 'benchmarks/*.py' 'Makefile' 'pyproject.toml' 'docs/*.md' 'README.md' |
    xargs -0 -r sed -i -E "${sed_args[@]}"

# Paths named in docs and comments (`tests/test_runs.py`) follow the files.
path_args=()
for move in "${MOVES[@]}"; do
    read -r old new <<<"$move"
    path_args+=(-e "s#tests/${old}#tests/${new}#g")
done
path_args+=(-e "s#tests/test_sink_\\*\\.py#tests/sinks/test_*.py#g")
git ls-files -z -- 'tests/*.py' 'docs/*.md' 'README.md' 'Makefile' 'pyproject.toml' '.ci/*' |
    xargs -0 -r sed -i "${path_args[@]}"

git rm -q --cached tests/relayout.sh 2>/dev/null || true
rm -f tests/relayout.sh
git add -A tests docs README.md Makefile pyproject.toml benchmarks
echo "relayout: moved ${#MOVES[@]} test modules; review with 'git status', then run make test and commit"
