package kbs

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// loadPKCS8PEM reads a PEM "PRIVATE KEY" block and returns its DER.
func loadPKCS8PEM(path string) ([]byte, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, fmt.Errorf("kbs: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("kbs: %s: no PEM PRIVATE KEY block", path)
	}
	return b.Bytes, nil
}
