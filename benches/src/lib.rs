//! MetricsStack's benchmarks live in this crate's binaries (`src/bin/`) and in
//! `benches/query_bench.rs`, apart from the programs they measure, so that the programs do
//! not carry the benchmarks' dependencies. The `scripts/bench-*` commands run them.
