// The SDK check of the injection webhook: run inside a pod that only carries the label
// dind.dev/inject, it starts a container with a mapped port through Testcontainers (which reads
// DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH like every Docker SDK) and talks to it at
// the host and port Testcontainers reports.
package sdk

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// testImage is the image the tests run (SDK_TEST_IMAGE: one with busybox httpd and sleep).
func testImage(t *testing.T) string {
	image := os.Getenv("SDK_TEST_IMAGE")
	if image == "" {
		t.Fatal("SDK_TEST_IMAGE: the image to run (one with busybox httpd)")
	}
	return image
}

func TestMappedPort(t *testing.T) {
	image := testImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:        image,
			ExposedPorts: []string{"8080/tcp"},
			Cmd:          []string{"/bin/sh", "-c", "mkdir -p /www && echo hello-from-testcontainers > /www/index.html && exec busybox httpd -f -p 8080 -h /www"},
			WaitingFor:   wait.ForListeningPort("8080/tcp").WithStartupTimeout(time.Minute),
		},
		Started: true,
	})
	if err != nil {
		t.Fatalf("starting the container: %v", err)
	}
	defer func() { _ = c.Terminate(context.Background()) }()
	host, err := c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	port, err := c.MappedPort(ctx, "8080/tcp")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + host + ":" + port.Port() + "/"
	t.Logf("container answers at %s", url)
	var body string
	for i := 0; i < 50; i++ {
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(body, "hello-from-testcontainers") {
		t.Fatalf("GET %s: %q", url, body)
	}
}

// TestLeftBehind runs with Ryuk on: it starts a container and does not terminate it, as a test
// that crashes would, and prints its id. Ryuk (started by Testcontainers in the same daemon, with
// the daemon's socket bound in) removes it once this process's connection has been gone for
// RYUK_RECONNECTION_TIMEOUT; the caller checks that it is gone.
func TestLeftBehind(t *testing.T) {
	image := testImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{Image: image, Cmd: []string{"sleep", "3600"}},
		Started:          true,
	})
	if err != nil {
		t.Fatalf("starting the container: %v", err)
	}
	t.Logf("left-behind %s", c.GetContainerID())
	fmt.Printf("left-behind %s\n", c.GetContainerID())
}
