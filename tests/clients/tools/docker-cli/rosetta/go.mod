// Stands in for github.com/tonistiigi/go-rosetta, which the Go module proxy refuses to serve here.
module github.com/tonistiigi/go-rosetta

go 1.20
