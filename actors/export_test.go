package actors

// ClassifyHealth exposes classifyHealth to the external tests.
var ClassifyHealth = classifyHealth
