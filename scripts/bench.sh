#!/usr/bin/env bash
# make bench: the Go benchmarks, then the load harness (shared/bench/run.sh) against direct, nginx,
# haproxy (when installed) and lmproxy in one invocation; writes the figures into
# docs/performance.md between its "make bench" markers (the rest of the file is left as it is).
#
#   scripts/bench.sh [path/to/lmproxy]        (make bench builds bin/lmproxy first)
#
# Knobs (environment): REPS (3), SCENARIOS ("a1 a64 b c c2 d e"), QUICK=1 (REPS=1 and short
# durations, to try it out), BENCH_DIR (the harness; default ../shared/bench beside the checkout),
# WORK (/tmp/bench: the harness's builds, logs and results), DOC (docs/performance.md).
# The harness's own knobs (A1_REQUESTS, A64_DURATION, B_DURATION, C_CONC, C_DURATION, LB, ...)
# pass through. Run as root, it installs nginx and haproxy with apt-get when missing; otherwise
# their targets are skipped, and the script says so.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LMPROXY=$(realpath "${1:-$ROOT/bin/lmproxy}")
WORK=${WORK:-/tmp/bench}
DOC=${DOC:-$ROOT/docs/performance.md}
export PATH=$PATH:/usr/local/go/bin WORK

SKIPPED=()
skip() { SKIPPED+=("$1"); echo "bench: skipped: $1" >&2; }
die() { echo "bench: $1" >&2; exit 1; }

# An explicit BENCH_DIR wins over the copy of shared/ beside the checkout (where CI puts it).
if [[ -n ${BENCH_DIR:-} ]]; then
	BENCH=$BENCH_DIR
else
	BENCH=$ROOT/../shared/bench
fi
[[ -f $BENCH/run.sh ]] || die "no load harness at $BENCH (set BENCH_DIR to the folder holding run.sh)"
BENCH=$(cd "$BENCH" && pwd)
[[ -x $LMPROXY ]] || die "no lmproxy binary at $LMPROXY (make bench builds bin/lmproxy)"
command -v go >/dev/null || die "go is not on PATH"

# The knobs, as the command line that set them, for the report.
KNOBS=
for v in QUICK REPS SCENARIOS BENCH_DIR LB A1_REQUESTS A64_DURATION B_DURATION C_CONC C_DURATION; do
	[[ -n ${!v:-} ]] && KNOBS+="$v=${!v} "
done
if [[ -n ${MAKELEVEL:-} ]]; then INVOKED="${KNOBS}make bench"; else INVOKED="${KNOBS}scripts/bench.sh"; fi

BENCHTIME=1s
if [[ ${QUICK:-} == 1 ]]; then
	REPS=${REPS:-1}
	export A64_DURATION=${A64_DURATION:-3s} B_DURATION=${B_DURATION:-3s} C_DURATION=${C_DURATION:-5s}
	BENCHTIME=200ms
fi
REPS=${REPS:-3} SCENARIOS=${SCENARIOS:-a1 a64 b c c2 d e}

# --- prerequisites -------------------------------------------------------------------------------
command -v curl >/dev/null || die "curl is missing (the harness polls with it): apt-get install curl"
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
if ((${#missing[@]})); then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		echo "bench: installing ${missing[*]} with apt-get" >&2
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
			echo "bench: apt-get install ${missing[*]} failed" >&2
	else
		echo "bench: ${missing[*]} missing and not installable here (needs root and apt-get)" >&2
	fi
fi
TARGETS=direct
if command -v nginx >/dev/null; then TARGETS+=" nginx"; else skip "nginx target (not installed): no lmproxy ÷ nginx ratios"; fi
if command -v haproxy >/dev/null; then TARGETS+=" haproxy"; else skip "haproxy target (not installed)"; fi
TARGETS+=" custom"

# The harness needs its ports; a leftover from an earlier run would be measured instead.
for p in ${PROXY_PORT:-8080} ${UP_PORTS:-9001 9002}; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use (the harness needs it free)"; fi
done

# --- Go benchmarks -------------------------------------------------------------------------------
# First, while nothing else runs on the machine.
mkdir -p "$WORK"
GOBENCH_LOG=$WORK/gobench.txt
GOBENCH_CMD="go test -run '^\$' -bench . -benchmem -benchtime $BENCHTIME ./..."
echo "bench: $GOBENCH_CMD" >&2
GOBENCH_RC=0
(cd "$ROOT" && go test -run '^$' -bench . -benchmem -benchtime "$BENCHTIME" ./...) >"$GOBENCH_LOG" 2>&1 || GOBENCH_RC=$?
((GOBENCH_RC == 0)) || echo "bench: the Go benchmarks failed (exit $GOBENCH_RC); see $GOBENCH_LOG" >&2

# --- load harness --------------------------------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$WORK/make-bench-$STAMP.jsonl
# Per-request access logging at INFO would put a log write on every request: ERROR keeps the hot
# path free of it. No state file: the benchmark must not depend on or change the user's registry.
TARGET_CMD="$LMPROXY serve --host 127.0.0.1 --port {port} --nodes {upstreams} --disable-cache-status --log-level ERROR"
HARNESS_CMD="TARGET=\"<$TARGETS, rotated by the repetition>\" TARGET_NAME=lmproxy TARGET_CMD='$TARGET_CMD' REPS=1 SCENARIOS=<one of: $SCENARIOS>"
for v in A1_REQUESTS A64_DURATION B_DURATION C_CONC C_DURATION LB; do
	[[ -n ${!v:-} ]] && HARNESS_CMD+=" $v=${!v}"
done
HARNESS_CMD+=" OUT=<part> $BENCH/run.sh"
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

# rotated N: the targets rotated left by N places. Repetition r runs them rotated by r-1, so that
# over the repetitions each target runs early and late in its round: with a fixed order the last
# target always ran one or two minutes after nginx, and whatever the machine did in between (it
# drifts by more than the proxies differ) fell on it alone.
rotated() {
	local -a t
	read -ra t <<<"$TARGETS"
	local n=$(($1 % ${#t[@]}))
	local -a r=("${t[@]:n}" "${t[@]:0:n}")
	echo "${r[*]}"
}

# harness SCENARIO REP: one repetition of one scenario for every target, appended to OUT once it all
# worked. run.sh stops at its first failing command, and one of them fails now and then on a busy
# machine (its awk over /proc/*/stat exits 2 when a process ends between the glob and the read), so
# each scenario is retried on its own rather than losing the whole run. Targets still run back to
# back, in the repetition's order. (run.sh names its logs in $WORK/logs after its own
# repetition, always 1 here: they are the last repetition's.)
harness() {
	local part=$WORK/make-bench-$STAMP.part rc try
	for try in 1 2 3; do
		rm -f "$part"
		rc=0
		TARGET=$(rotated $(($2 - 1))) TARGET_NAME=lmproxy TARGET_CMD=$TARGET_CMD REPS=1 SCENARIOS=$1 OUT=$part bash "$BENCH/run.sh" || rc=$?
		if ((rc == 0)); then
			cat "$part" >>"$OUT"
			rm -f "$part"
			return 0
		fi
		((rc == 130)) && exit 130 # interrupted: run.sh has stopped what it started
		echo "bench: the harness failed (exit $rc) on scenario $1, attempt $try" >&2
	done
	return 1
}
echo "bench: $REPS repetition(s) of: $HARNESS_CMD" >&2
for rep in $(seq "$REPS"); do
	for sc in $SCENARIOS; do
		harness "$sc" "$rep" || skip "scenario $sc, repetition $rep: the harness failed 3 times (logs in $WORK/logs)"
	done
done
[[ -s $OUT ]] || die "the harness produced no results"

# --- report --------------------------------------------------------------------------------------
# summary OUT: one Markdown table of medians over the repetitions, per scenario, with lmproxy ÷ nginx.
summary() {
	awk '
	function after(s, key,    i) { # the number after "key": in s, or "" when absent
		i = index(s, "\"" key "\":")
		if (i == 0) return ""
		s = substr(s, i + length(key) + 3)
		if (!match(s, /^-?[0-9.]+([eE][-+]?[0-9]+)?/)) return ""
		return substr(s, 1, RLENGTH) + 0
	}
	function inside(s, obj,    i) { i = index(s, "\"" obj "\":"); return i ? substr(s, i) : "" } # s from "obj": on
	function list(s, key,    i, j) { # the numbers of "key":[...] as a space-separated list
		i = index(s, "\"" key "\":[")
		if (i == 0) return ""
		s = substr(s, i + length(key) + 4)
		j = index(s, "]")
		s = substr(s, 1, j - 1)
		gsub(",", " ", s)
		return s
	}
	function median(vals,    n, v, i, j, t) {
		n = split(vals, v, " ")
		if (n == 0) return ""
		for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
		return n % 2 ? v[(n+1)/2] + 0 : (v[n/2] + v[n/2+1]) / 2
	}
	function put(t, sc, m, v) { if (v != "") { vals[t, sc, m] = vals[t, sc, m] " " v; seen[t] = 1 } }
	function fmt(x) {
		if (x == "") return "–"
		if (x == int(x)) return sprintf("%d", x)
		if (x >= 100 || x <= -100) return sprintf("%.0f", x)
		if (x >= 10 || x <= -10) return sprintf("%.1f", x)
		if (x >= 1 || x <= -1) return sprintf("%.2f", x)
		return sprintf("%.3f", x)
	}
	{
		t = $0; sub(/.*"target":"/, "", t); sub(/".*/, "", t)
		sc = $0; sub(/.*"scenario":"/, "", sc); sub(/".*/, "", sc)
		load = inside($0, "load"); lat = inside(load, "latency_ms"); ttft = inside(load, "ttft_ms")
		n = after(load, "ok") + after(load, "errors") + after(load, "aborted")
		put(t, sc, "lat50", after(lat, "p50")); put(t, sc, "lat99", after(lat, "p99"))
		put(t, sc, "ttft50", after(ttft, "p50")); put(t, sc, "ttft99", after(ttft, "p99"))
		put(t, sc, "rps", after(load, "rps")); put(t, sc, "cps", after(load, "chunks_per_s"))
		put(t, sc, "errors", after(load, "errors"))
		p = inside($0, "proxy")
		if (p !~ /^"proxy":null/ && n > 0) {
			put(t, sc, "cpu1k", after(p, "cpu_s") / n * 1000)
			put(t, sc, "peak", after(p, "rss_peak_kb") / 1024)
			put(t, sc, "kib", (after(p, "rss_peak_kb") - after(p, "rss_base_kb")) / after(load, "concurrency"))
		}
		ev = inside($0, "events")
		if (ev !~ /^"events":null/) {
			put(t, sc, "cancelled", after(ev, "cancel") / n * 100)
			put(t, sc, "cancelms", median(list(ev, "cancel_elapsed_ms")))
			put(t, sc, "chunks", median(list(ev, "cancel_chunks_sent")))
		}
	}
	END {
		nm = split("a1 lat50 latency p50 ms|a1 lat99 latency p99 ms|a1 cpu1k proxy CPU s per 1000 requests|" \
			"a64 rps requests/s (whole system)|a64 lat99 latency p99 ms|a64 cpu1k proxy CPU s per 1000 requests|a64 peak proxy peak RSS MiB|" \
			"b cps SSE chunks/s (whole system)|b ttft50 TTFT p50 ms|b ttft99 TTFT p99 ms|b cpu1k proxy CPU s per 1000 requests|b peak proxy peak RSS MiB|" \
			"c errors errors (sum over runs)|c cps SSE chunks/s (whole system)|c ttft99 TTFT p99 ms|c cpu1k proxy CPU s per 1000 requests|c kib proxy KiB per open stream|" \
			"c2 ttft50 TTFT p50 ms|c2 cpu1k proxy CPU s per 1000 requests|c2 kib proxy KiB per open stream|" \
			"d cancelms client hung up after 3 chunks: replica cancelled at ms|d chunks chunks the replica sent|" \
			"e cancelled client timed out at 500 ms: % of replica requests cancelled", m, "|")
		ncols = split("direct nginx haproxy lmproxy", cols, " ")
		hdr = "| scenario | figure |"; sep = "|---|---|"
		for (c = 1; c <= ncols; c++) if (cols[c] in seen) { hdr = hdr " " cols[c] " |"; sep = sep "---|" }
		print hdr " lmproxy ÷ nginx |"; print sep "---|"
		for (k = 1; k <= nm; k++) {
			split(m[k], f, " "); sc = f[1]; key = f[2]; label = substr(m[k], length(sc) + length(key) + 3)
			row = ""; any = 0
			for (c = 1; c <= ncols; c++) {
				if (!(cols[c] in seen)) continue
				v = vals[cols[c], sc, key]
				if (key == "errors") { split(v, e, " "); s = ""; for (i in e) s += e[i]; x = v == "" ? "" : s } else x = median(v)
				res[cols[c]] = x; any = any || x != ""
				row = row " " fmt(x) " |"
			}
			if (!any) continue
			r = (res["nginx"] != "" && res["lmproxy"] != "" && res["nginx"] + 0 != 0) ? sprintf("%.2f", res["lmproxy"] / res["nginx"]) : "–"
			print "| " sc " | " label " |" row " " r " |"
			delete res
		}
	}' "$1"
}

# gobench LOG: the benchmark lines of go test as a Markdown table.
gobench() {
	awk '
	/^pkg: / { pkg = $2 }
	/^Benchmark/ {
		if (!hdr++) { print "| package | benchmark | runs | ns/op | B/op | allocs/op | other |"; print "|---|---|---|---|---|---|---|" }
		ns = bo = al = other = ""
		for (i = 3; i < NF; i += 2) {
			if ($(i+1) == "ns/op") ns = $i
			else if ($(i+1) == "B/op") bo = $i
			else if ($(i+1) == "allocs/op") al = $i
			else other = other (other ? ", " : "") $i " " $(i+1)
		}
		sub(/^github.com\/lmproxy\/lmproxy\/?/, "./", pkg)
		printf "| %s | %s | %s | %s | %s | %s | %s |\n", pkg, $1, $2, ns, bo, al, other
	}' "$1"
}

# machine: what the figures depend on.
machine() {
	local cpu os
	cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
	os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
	echo "- CPU: $(nproc) × ${cpu:-unknown}; memory $(awk '/^MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	echo "- OS: ${os:-unknown}, kernel $(uname -r); open-file limit $(ulimit -Hn)"
	echo "- $(go version | cut -d' ' -f3-)$(command -v nginx >/dev/null && echo ", $(nginx -v 2>&1 | cut -d' ' -f3)")$(command -v haproxy >/dev/null && echo ", HAProxy $(haproxy -v | awk 'NR==1{print $3}')")"
	echo "- lmproxy at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "unknown commit")$([[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] && echo " plus uncommitted changes")"
}

BLOCK=$WORK/performance-block-$STAMP.md
{
	echo "<!-- BEGIN make bench: written by scripts/bench.sh; edits between these markers are overwritten -->"
	echo "## Current figures"
	echo
	echo "Measured $STARTED by \`$INVOKED\`$([[ ${QUICK:-} == 1 ]] && echo " (QUICK: one repetition, short runs; indicative only)")."
	echo "Medians of $REPS repetition(s); the harness is \`$BENCH/run.sh\`, run once per scenario and"
	echo "repetition with every target back to back (the order rotated by one place per repetition), each"
	echo "scenario run with fresh replicas and a fresh proxy."
	echo
	echo "Machine:"
	echo
	machine
	echo
	echo "Harness command, once per scenario and repetition:"
	echo
	echo '```'
	echo "$HARNESS_CMD"
	echo '```'
	echo
	echo "### Summary"
	echo
	echo "Whole-system figures (requests/s, chunks/s) are what the load generator got while it, the two"
	echo "replicas and the proxy shared the machine. \"lmproxy ÷ nginx\" > 1 is worse for latency, CPU and"
	echo "memory, better for requests/s and chunks/s."
	echo
	summary "$OUT"
	echo
	echo "### Harness tables (median, min–max)"
	echo
	"$WORK/bin/summarize" -spread "$OUT" | sed 's/^### /#### /'
	echo "### Go benchmarks"
	echo
	echo "\`$GOBENCH_CMD\`$( ((GOBENCH_RC)) && echo " **failed (exit $GOBENCH_RC)**; its output is in $GOBENCH_LOG")"
	echo
	gobench "$GOBENCH_LOG"
	if ((${#SKIPPED[@]})); then
		echo
		echo "### Skipped"
		echo
		printf -- '- %s\n' "${SKIPPED[@]}"
	fi
	echo "<!-- END make bench -->"
} >"$BLOCK"

mkdir -p "$(dirname "$DOC")"
if [[ -f $DOC ]] && grep -q '^<!-- BEGIN make bench' "$DOC" && grep -q '^<!-- END make bench' "$DOC"; then
	awk -v block="$BLOCK" '
		/^<!-- BEGIN make bench/ { while ((getline l < block) > 0) print l; skip = 1; next }
		/^<!-- END make bench/ { skip = 0; next }
		!skip' "$DOC" >"$DOC.tmp"
	mv "$DOC.tmp" "$DOC"
else
	[[ -f $DOC ]] && cp "$DOC" "$DOC.bak" && echo "bench: $DOC had no make bench markers; kept it as $DOC.bak" >&2
	{ echo "# Performance"; echo; cat "$BLOCK"; } >"$DOC"
fi
echo "bench: wrote $DOC (results: $OUT)" >&2
((${#SKIPPED[@]} == 0)) || printf 'bench: skipped: %s\n' "${SKIPPED[@]}" >&2
exit "$GOBENCH_RC"
