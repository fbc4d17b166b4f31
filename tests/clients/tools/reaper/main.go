// A stand-in for Testcontainers' Ryuk (testcontainers/ryuk): the module github.com/testcontainers/
// moby-ryuk is not served by the Go module proxy these machines reach, so the harness builds this
// instead, from the standard library alone. It speaks Ryuk's protocol as testcontainers-go v0.45
// uses it (reaper.go), so a Testcontainers session with Ryuk on runs as it does for users:
//
//   - it logs "Started" once it listens on RYUK_PORT (8080), which Testcontainers waits for;
//   - each client connection sends lines of filters (`label=K=V&label=K2=V2\n`); each is
//     answered "ACK\n" and remembered;
//   - when the last connection has been gone for RYUK_RECONNECTION_TIMEOUT (10s), or none came
//     within RYUK_CONNECTION_TIMEOUT (1m), it removes every container (forced, with its
//     anonymous volumes), network, volume and image that matches a filter set, and exits.
//
// It talks to the Docker daemon at /var/run/docker.sock (Testcontainers binds the daemon's socket
// there), with the Engine API over HTTP, as Ryuk does.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

func duration(env string, def time.Duration) time.Duration {
	if v := os.Getenv(env); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// state: the filter sets received and the connections open.
type state struct {
	mu      sync.Mutex
	filters map[string]url.Values
	open    int
	changed chan struct{}
}

func (s *state) note(f func()) {
	s.mu.Lock()
	f()
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func main() {
	port := os.Getenv("RYUK_PORT")
	if port == "" {
		port = "8080"
	}
	connectTimeout := duration("RYUK_CONNECTION_TIMEOUT", time.Minute)
	reconnectTimeout := duration("RYUK_RECONNECTION_TIMEOUT", 10*time.Second)
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	log.Printf("Started on port %s", port)
	s := &state{filters: map[string]url.Values{}, changed: make(chan struct{}, 1)}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.note(func() { s.open++ })
			go serve(s, conn)
		}
	}()
	// Wait for a first connection, then for all of them to be gone for the reconnection timeout.
	deadline := time.NewTimer(connectTimeout)
	seen := false
	for {
		s.mu.Lock()
		open := s.open
		s.mu.Unlock()
		if open > 0 {
			seen = true
			deadline.Stop()
		} else if seen {
			deadline.Reset(reconnectTimeout)
		}
		select {
		case <-s.changed:
			continue
		case <-deadline.C:
		}
		s.mu.Lock()
		open = s.open
		s.mu.Unlock()
		if open == 0 {
			break
		}
	}
	_ = ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !seen {
		log.Printf("no connection within %s", connectTimeout)
	}
	for _, f := range s.filters {
		reap(f)
	}
	log.Printf("done")
}

func serve(s *state, conn net.Conn) {
	defer func() {
		conn.Close()
		s.note(func() { s.open-- })
	}()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f, err := url.ParseQuery(line)
		if err != nil {
			log.Printf("bad filters %q: %v", line, err)
			continue
		}
		s.note(func() { s.filters[line] = f })
		log.Printf("filters added: %s", line)
		if _, err := conn.Write([]byte("ACK\n")); err != nil {
			return
		}
	}
}

var docker = &http.Client{
	Timeout: time.Minute,
	Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", "/var/run/docker.sock")
	}},
}

func call(method, path string, out any) error {
	req, err := http.NewRequest(method, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	resp, err := docker.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if out != nil && resp.StatusCode < 300 {
		return json.Unmarshal(body, out)
	}
	return nil
}

// reap removes what matches one filter set (Engine API filters: {"label": ["K=V", ...]}).
func reap(f url.Values) {
	filters, _ := json.Marshal(map[string][]string(f))
	q := "filters=" + url.QueryEscape(string(filters))
	var containers []struct{ Id string }
	if err := call("GET", "/containers/json?all=1&"+q, &containers); err != nil {
		log.Printf("listing containers: %v", err)
	}
	for _, c := range containers {
		if err := call("DELETE", "/containers/"+c.Id+"?force=1&v=1", nil); err != nil {
			log.Printf("%v", err)
		} else {
			log.Printf("removed container %s", c.Id[:12])
		}
	}
	var networks []struct{ Id string }
	_ = call("GET", "/networks?"+q, &networks)
	for _, n := range networks {
		if err := call("DELETE", "/networks/"+n.Id, nil); err == nil {
			log.Printf("removed network %s", n.Id[:12])
		}
	}
	var volumes struct{ Volumes []struct{ Name string } }
	_ = call("GET", "/volumes?"+q, &volumes)
	for _, v := range volumes.Volumes {
		if err := call("DELETE", "/volumes/"+v.Name, nil); err == nil {
			log.Printf("removed volume %s", v.Name)
		}
	}
	var images []struct{ Id string }
	_ = call("GET", "/images/json?"+q, &images)
	for _, i := range images {
		if err := call("DELETE", "/images/"+i.Id+"?force=1", nil); err == nil {
			log.Printf("removed image %s", i.Id)
		}
	}
}
