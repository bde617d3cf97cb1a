package server

import (
	"io"
	"log/slog"
	"os"
	"testing"
)

// testLogger discards logs unless KBS_TEST_LOG is set.
func testLogger(testing.TB) *slog.Logger {
	if os.Getenv("KBS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
