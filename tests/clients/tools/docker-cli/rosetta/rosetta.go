// Package rosetta answers the one question the Docker CLI asks it (`docker version`: is this
// process an x86-64 binary translated by Apple's Rosetta?). Upstream answers it from a macOS
// sysctl and returns false on every other system; these tools only run on Linux, so this copy
// returns false. It exists because the Go module proxy refuses to serve the upstream module here.
package rosetta

// Enabled reports whether the process runs under Rosetta translation: never on Linux.
func Enabled() bool { return false }

// Available reports whether Rosetta is installed: never on Linux.
func Available() bool { return false }

// NativeArch returns the machine's native architecture; on Linux, what the process runs as.
func NativeArch() string { return "" }
