package actors

// ClassifyHealth exposes classifyHealth to the external tests.
var ClassifyHealth = classifyHealth

// IsProbeTick reports whether m is the tick that makes a replica actor probe, so tests can crash an
// actor on a message it really handles.
func IsProbeTick(m any) bool { _, ok := m.(probeTick); return ok }
