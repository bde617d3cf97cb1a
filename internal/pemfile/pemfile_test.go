package pemfile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func block(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestDecode(t *testing.T) {
	one := block("CERTIFICATE", []byte{1, 2, 3})
	if der, err := Decode(append(one, "\n  \n"...), "CERTIFICATE"); err != nil || string(der) != "\x01\x02\x03" {
		t.Fatalf("Decode(one block) = %x, %v", der, err)
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"empty":      {nil, "no PEM CERTIFICATE block"},
		"not pem":    {[]byte("hello"), "no PEM CERTIFICATE block"},
		"other type": {block("PRIVATE KEY", []byte{1}), `is "PRIVATE KEY", want "CERTIFICATE"`},
		"two blocks": {append(append([]byte{}, one...), one...), "2 PEM CERTIFICATE blocks, want exactly one"},
		"trailing":   {append(append([]byte{}, one...), "junk"...), "not a PEM block after the last"},
		"mixed":      {append(append([]byte{}, one...), block("PRIVATE KEY", []byte{1})...), `block 2 is "PRIVATE KEY"`},
	} {
		if _, err := Decode(tc.data, "CERTIFICATE"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Decode error %v, want %q", name, err, tc.want)
		}
	}
	if ders, err := DecodeAll(append(append([]byte{}, one...), one...), "CERTIFICATE"); err != nil || len(ders) != 2 {
		t.Fatalf("DecodeAll(two blocks) = %d, %v", len(ders), err)
	}
}

func TestReadFiles(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPath := write("cert.pem", block("CERTIFICATE", certDER))
	chainPath := write("chain.pem", append(block("CERTIFICATE", certDER), block("CERTIFICATE", certDER)...))
	keyPath := write("key.pem", block("PRIVATE KEY", keyDER))
	badKey := write("bad.pem", block("PRIVATE KEY", []byte{0x30, 0x00}))

	if c, err := ReadCertificate(certPath); err != nil || c.Subject.CommonName != "t" {
		t.Fatalf("ReadCertificate = %v, %v", c, err)
	}
	if _, err := ReadCertificate(chainPath); err == nil || !strings.Contains(err.Error(), "chain.pem") {
		t.Fatalf("ReadCertificate(chain) error %v, want one naming the file", err)
	}
	if chain, err := ReadCertificateChain(chainPath); err != nil || len(chain) != 2 {
		t.Fatalf("ReadCertificateChain = %d, %v", len(chain), err)
	}
	if k, err := ReadPrivateKey(keyPath); err != nil || !key.PublicKey.Equal(k.Public()) {
		t.Fatalf("ReadPrivateKey = %v, %v", k, err)
	}
	if _, err := ReadPrivateKey(certPath); err == nil {
		t.Fatal("ReadPrivateKey accepted a certificate")
	}
	if _, err := ReadPrivateKey(badKey); err == nil || !strings.Contains(err.Error(), "bad.pem") {
		t.Fatalf("ReadPrivateKey(bad DER) error %v", err)
	}
	if _, err := Read(filepath.Join(dir, "missing"), "CERTIFICATE"); err == nil {
		t.Fatal("Read of a missing file succeeded")
	}
}
