// Command loadgen is bench/api.py's open-loop HTTP/1.1 load generator (--client go).
//
// It reads a JSON spec on stdin, the same as the Python generator's: host, port, rps, seconds,
// requests (raw HTTP/1.1 requests, sent in turn) and sequential (that many requests one at a
// time instead). Request i is due at start + i/rps and its latency counts from then, not from
// when it was sent, so a slow answer cannot hold back the next ones (no coordinated omission).
// At most maxConns connections are open, kept alive as a client's pool; a request past them
// waits for one, its latency still counted from its due time. An answer not had within the
// timeout counts as status 0. It prints one JSON line: n, statuses, p50_ms, p99_ms, max_ms and
// cpu_s (its own user + system CPU seconds, from getrusage).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const (
	maxConns = 256
	timeout  = 30 * time.Second
)

type spec struct {
	Host       string   `json:"host"`
	Port       int      `json:"port"`
	RPS        float64  `json:"rps"`
	Seconds    float64  `json:"seconds"`
	Requests   []string `json:"requests"`
	Sequential int      `json:"sequential"`
}

type conn struct {
	c net.Conn
	r *bufio.Reader
}

// send writes one request and reads its answer (Content-Length bodies, as aiohttp sends them).
func (k *conn) send(raw []byte) (int, error) {
	if err := k.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	if _, err := k.c.Write(raw); err != nil {
		return 0, err
	}
	status, length := 0, 0
	for first := true; ; first = false {
		line, err := k.r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		if first {
			if len(line) < 12 {
				return 0, fmt.Errorf("bad status line %q", line)
			}
			if status, err = strconv.Atoi(string(line[9:12])); err != nil {
				return 0, err
			}
		} else if len(line) > 15 && bytes.EqualFold(line[:15], []byte("content-length:")) {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(line[15:]))); err != nil {
				return 0, err
			}
		}
	}
	if _, err := k.r.Discard(length); err != nil {
		return 0, err
	}
	return status, nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func main() {
	runtime.GOMAXPROCS(1) // a light client: one core at most, as the Python one
	cpu0 := cpuSeconds()
	var s spec
	if err := json.NewDecoder(os.Stdin).Decode(&s); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: bad spec:", err)
		os.Exit(2)
	}
	raws := make([][]byte, len(s.Requests))
	for i, r := range s.Requests {
		raws[i] = []byte(r)
	}
	addr := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	var (
		mu       sync.Mutex
		idle     []*conn
		lat      []float64
		statuses = map[int]int{}
	)
	slots := make(chan struct{}, maxConns)
	one := func(raw []byte, due time.Time) {
		slots <- struct{}{}
		defer func() { <-slots }()
		mu.Lock()
		var k *conn
		if n := len(idle); n > 0 {
			k, idle = idle[n-1], idle[:n-1]
		}
		mu.Unlock()
		if k == nil {
			c, err := net.DialTimeout("tcp", addr, timeout)
			if err != nil {
				mu.Lock()
				statuses[0]++
				mu.Unlock()
				return
			}
			k = &conn{c, bufio.NewReaderSize(c, 64*1024)}
		}
		status, err := k.send(raw)
		took := time.Since(due).Seconds()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			statuses[0]++
			k.c.Close()
			return
		}
		lat = append(lat, took)
		statuses[status]++
		idle = append(idle, k)
	}
	if s.Sequential > 0 {
		for i := 0; i < s.Sequential; i++ {
			one(raws[i%len(raws)], time.Now())
		}
	} else {
		var wg sync.WaitGroup
		start := time.Now().Add(50 * time.Millisecond)
		total := int(s.RPS * s.Seconds)
		for i := 0; i < total; i++ {
			due := start.Add(time.Duration(float64(i) / s.RPS * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			wg.Add(1)
			go func(raw []byte, due time.Time) {
				defer wg.Done()
				one(raw, due)
			}(raws[i%len(raws)], due)
		}
		wg.Wait()
	}
	for _, k := range idle {
		k.c.Close()
	}
	sort.Float64s(lat)
	n := len(lat)
	q := func(f float64) any {
		if n == 0 {
			return nil
		}
		i := int(f * float64(n))
		if i > n-1 {
			i = n - 1
		}
		return lat[i] * 1000
	}
	st := map[string]int{}
	for k, v := range statuses {
		st[strconv.Itoa(k)] = v
	}
	out := map[string]any{
		"n": n, "statuses": st, "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0), "cpu_s": cpuSeconds() - cpu0,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		_, _ = io.WriteString(os.Stderr, err.Error())
		os.Exit(1)
	}
}
