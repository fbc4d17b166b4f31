module dind.dev/tests/reaper

go 1.26
