package oci

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/rootfs"
)

// maxAccountFile bounds /etc/passwd and /etc/group read from an image.
const maxAccountFile = 4 << 20

// Overrides are command-line settings that replace the image config's.
type Overrides struct {
	// Entrypoint replaces the image's when non-nil; as with docker run,
	// it also drops the image's Cmd unless Cmd is given too.
	Entrypoint []string
	// Cmd replaces the image's when non-nil.
	Cmd []string
	// Env entries are added after the image's, replacing the same keys.
	Env []string
	// WorkingDir and User replace the image's when non-empty; User may name
	// a user and group ("app", "app:staff", "1000:staff").
	WorkingDir, User string
}

// Workload is the image's workload configuration with ov applied and the
// user resolved to numeric "uid:gid" through the tree's /etc/passwd and
// /etc/group (the tree holds the unpacked image).
func (im *Image) Workload(t *rootfs.Tree, ov Overrides) (*workload.Config, error) {
	c := im.Config.Config
	w := &workload.Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, WorkingDir: c.WorkingDir}
	if ov.Entrypoint != nil {
		w.Entrypoint, w.Cmd = ov.Entrypoint, nil
	}
	if ov.Cmd != nil {
		w.Cmd = ov.Cmd
	}
	w.Env = mergeEnv(c.Env, ov.Env)
	if ov.WorkingDir != "" {
		w.WorkingDir = ov.WorkingDir
	}
	user := c.User
	if ov.User != "" {
		user = ov.User
	}
	u, err := ResolveUser(t, user)
	if err != nil {
		return nil, err
	}
	w.User = u
	if err := w.Validate(); err != nil {
		return nil, fmt.Errorf("oci: image %s: %w", im.Ref, err)
	}
	return w, nil
}

func mergeEnv(base, add []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range add {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range out {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				out[i], replaced = kv, true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// ResolveUser turns an OCI config User ("", "uid", "name", "uid:gid",
// "name:group", ...) into "uid:gid" with the tree's /etc/passwd and
// /etc/group, as container runtimes do: a user without a group gets its
// passwd primary group, or 0 when it has no passwd entry. "" stays "" (root).
func ResolveUser(t *rootfs.Tree, user string) (string, error) {
	if user == "" {
		return "", nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	if u == "" || (hasGroup && g == "") {
		return "", fmt.Errorf("oci: user %q: empty user or group", user)
	}
	var uid, gid uint64
	var pw *account
	if n, err := strconv.ParseUint(u, 10, 32); err == nil {
		uid = n
		if pw, err = findAccount(t, "etc/passwd", "", n); err != nil {
			return "", err
		}
	} else {
		if pw, err = findAccount(t, "etc/passwd", u, 0); err != nil {
			return "", err
		}
		if pw == nil {
			return "", fmt.Errorf("oci: user %q is not in the image's /etc/passwd", u)
		}
		uid = pw.id
	}
	switch {
	case !hasGroup && pw != nil:
		gid = pw.gid
	case !hasGroup:
		gid = 0
	default:
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			gid = n
		} else {
			gr, err := findAccount(t, "etc/group", g, 0)
			if err != nil {
				return "", err
			}
			if gr == nil {
				return "", fmt.Errorf("oci: group %q is not in the image's /etc/group", g)
			}
			gid = gr.id
		}
	}
	return fmt.Sprintf("%d:%d", uid, gid), nil
}

// account is one /etc/passwd or /etc/group line.
type account struct {
	name    string
	id, gid uint64 // gid: passwd only
}

// findAccount looks an entry up by name (or by id when name is "") in a
// passwd-format file of the tree; a missing file finds nothing.
func findAccount(t *rootfs.Tree, file, name string, id uint64) (*account, error) {
	data, err := t.ReadFile(file, maxAccountFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("oci: reading the image's /%s: %w", file, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), maxAccountFile)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < 3 {
			continue
		}
		n, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		a := &account{name: f[0], id: n}
		if file == "etc/passwd" {
			if len(f) < 4 {
				continue
			}
			if a.gid, err = strconv.ParseUint(f[3], 10, 32); err != nil {
				continue
			}
		}
		if (name != "" && a.name == name) || (name == "" && a.id == id) {
			return a, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("oci: reading the image's /%s: %w", file, err)
	}
	return nil, nil
}
