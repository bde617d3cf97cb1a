// Command ociarchive writes an OCI archive (a tar of an OCI image layout)
// for the end-to-end scenario and the benchmark of `mkimage --from-oci`:
// layer 1 is a directory (everything owned by root), and with -user a
// second layer adds the user to /etc/passwd and /etc/group, gives it a home
// directory and a private file, and whites out /data from layer 1.
//
//	ociarchive -rootfs DIR -o FILE [-user NAME] [-entrypoint ARG]... [-cmd ARG]... [-env K=V]... [-workdir D]
package main

import (
	"archive/tar"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// mtime of every entry: the archive is reproducible.
var mtime = time.Unix(1_700_000_000, 0)

func main() {
	rootfs := flag.String("rootfs", "", "directory for the first layer")
	out := flag.String("o", "", "output OCI archive")
	user := flag.String("user", "", "add this user (uid 1000, gid 1000) in a second layer and run as it")
	workdir := flag.String("workdir", "", "working directory")
	var entrypoint, cmd, env list
	flag.Var(&entrypoint, "entrypoint", "entrypoint argument (repeatable)")
	flag.Var(&cmd, "cmd", "cmd argument (repeatable)")
	flag.Var(&env, "env", "KEY=VALUE (repeatable)")
	flag.Parse()
	if *rootfs == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: ociarchive -rootfs DIR -o FILE [-user NAME] [-entrypoint ARG]... [-cmd ARG]... [-env K=V]... [-workdir D]")
		os.Exit(2)
	}
	if err := run(*rootfs, *out, *user, *workdir, entrypoint, cmd, env); err != nil {
		fmt.Fprintln(os.Stderr, "ociarchive:", err)
		os.Exit(1)
	}
}

func run(rootfs, out, user, workdir string, entrypoint, cmd, env []string) error {
	dir, err := os.MkdirTemp(filepath.Dir(out), ".ociarchive-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	base, err := dirLayer(dir, rootfs)
	if err != nil {
		return err
	}
	layers := []v1.Layer{base}
	if user != "" {
		passwd, err := os.ReadFile(filepath.Join(rootfs, "etc", "passwd"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		group, err := os.ReadFile(filepath.Join(rootfs, "etc", "group"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if len(passwd) == 0 {
			passwd = []byte("root:x:0:0:root:/root:/bin/sh\n")
		}
		if len(group) == 0 {
			group = []byte("root:x:0:\n")
		}
		passwd = append(passwd, fmt.Sprintf("%s:x:1000:1000::/home/%s:/bin/sh\n", user, user)...)
		group = append(group, fmt.Sprintf("%s:x:1000:\n", user)...)
		home := "home/" + user
		l, err := tarLayer(dir, []entry{
			{hdr: tar.Header{Name: ".wh.data", Typeflag: tar.TypeReg, Mode: 0o644}},
			{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
			{hdr: tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, body: passwd},
			{hdr: tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644}, body: group},
			{hdr: tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755}},
			{hdr: tar.Header{Name: home + "/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 1000, Gid: 1000}},
			{hdr: tar.Header{Name: home + "/hello", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000}, body: []byte("krun-e2e-oci-hello\n")},
			{hdr: tar.Header{Name: "usr/bin/setuid-marker", Typeflag: tar.TypeReg, Mode: 0o4755}, body: []byte("marker\n")},
		})
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", "amd64", v1.Time{Time: mtime}
	cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Env, cf.Config.User, cf.Config.WorkingDir = entrypoint, cmd, env, user, workdir
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
	lay := filepath.Join(dir, "layout")
	p, err := layout.Write(lay, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img); err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	if err := tw.AddFS(os.DirFS(lay)); err != nil {
		f.Close()
		return err
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Println(d)
	return nil
}

type entry struct {
	hdr  tar.Header
	body []byte
	path string // file to copy instead of body
}

// dirLayer is a layer of everything under dir, owned by root.
func dirLayer(tmp, dir string) (v1.Layer, error) {
	var ents []entry
	links := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		h := tar.Header{Name: filepath.ToSlash(rel), Mode: int64(info.Mode().Perm())}
		if info.Mode()&fs.ModeSetuid != 0 {
			h.Mode |= 0o4000
		}
		if info.Mode()&fs.ModeSetgid != 0 {
			h.Mode |= 0o2000
		}
		if info.Mode()&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		e := entry{}
		switch {
		case info.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case info.Mode()&fs.ModeSymlink != 0:
			h.Typeflag = tar.TypeSymlink
			if h.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			st, _ := info.Sys().(*syscall.Stat_t)
			if st != nil && st.Nlink > 1 {
				if first, ok := links[st.Ino]; ok {
					h.Typeflag, h.Linkname = tar.TypeLink, first
					break
				}
				links[st.Ino] = h.Name
			}
			h.Typeflag, h.Size, e.path = tar.TypeReg, info.Size(), p
		default:
			return nil // devices, sockets: not in a test rootfs
		}
		e.hdr = h
		ents = append(ents, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tarLayer(tmp, ents)
}

// tarLayer writes the entries as a tar file in tmp and returns it as a
// (gzip-compressed) layer.
func tarLayer(tmp string, ents []entry) (v1.Layer, error) {
	f, err := os.CreateTemp(tmp, "layer-*.tar")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, e := range ents {
		h := e.hdr
		h.ModTime, h.Format = mtime, tar.FormatPAX
		if e.path == "" && h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if e.path != "" {
			f, err := os.Open(e.path)
			if err != nil {
				return nil, err
			}
			_, err = io.CopyN(tw, f, h.Size)
			f.Close()
			if err != nil {
				return nil, err
			}
		} else if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(f.Name(), tarball.WithMediaType(types.OCILayer))
}
