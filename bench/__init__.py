"""The harness: sweeps, versioned result tables, the CI regression gate, the leaderboard
and the throughput tables. See docs/harness.md."""
