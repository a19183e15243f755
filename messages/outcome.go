package messages

// Outcome is how a request on a replica ended. Only OK feeds the latency window; ClientGone never
// counts against the replica.
type Outcome int

// The outcomes of a request.
const (
	OK            Outcome = iota // the response reached the client whole
	UpstreamError                // the replica answered 5xx or broke the response
	DialError                    // the replica could not be reached; nothing was sent
	Timeout                      // --upstream-timeout ran out
	ClientGone                   // the client left first
	Panic                        // our handler panicked
	Rejected                     // the replica answered 4xx: the request's fault, not the replica's
	Unused                       // the request never went to the replica: DistServe failed before it
	Shutdown                     // the proxy cut it: --shutdown-timeout ran out before it ended
)

var outcomeNames = [...]string{"ok", "upstream_error", "dial_error", "timeout", "client_gone", "panic", "rejected", "unused", "shutdown"}

// String returns the outcome's name as logs and metrics show it.
func (o Outcome) String() string {
	if o < 0 || int(o) >= len(outcomeNames) {
		return "unknown"
	}
	return outcomeNames[o]
}

// CountsAgainstReplica reports whether the outcome is a failure on the replica's side, for the
// upstream-error metrics. The circuit breaker opens on DialError alone (see the registry).
func (o Outcome) CountsAgainstReplica() bool {
	return o == UpstreamError || o == DialError || o == Timeout
}
