module publisher-stream/bench/loadgen

go 1.22
