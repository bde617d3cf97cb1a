package confidential

import (
	"context"
	"errors"
	"reflect"
	"syscall"
	"testing"

	"github.com/krun-tee/krun-tee/guestabi"
)

// Run reports the stages it completes, in order, and none it did not reach.
func TestStageReportsReachedStages(t *testing.T) {
	img, _ := makeImage(t, pass)
	tests := []struct {
		name   string
		secret []byte
		actErr error
		want   []guestabi.Stage
	}{
		{"success", pass, nil, []guestabi.Stage{guestabi.StageKeyReceived, guestabi.StageDiskUnlocked}},
		{"wrong key", []byte("not the passphrase"), nil, []guestabi.Stage{guestabi.StageKeyReceived}},
		{"dm activation failed", pass, syscall.EINVAL, []guestabi.Stage{guestabi.StageKeyReceived}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []guestabi.Stage
			s := &Stage{
				Params: testParams(), Fetcher: &fakeFetcher{secret: tt.secret}, Device: img,
				OpenMapper: func() (Mapper, error) { return &fakeMapper{activateErr: tt.actErr}, nil },
				Mount:      func(string) error { return nil },
				Reached:    func(s guestabi.Stage) { got = append(got, s) },
			}
			_, err := s.Run(context.Background())
			if (err == nil) != (len(tt.want) == 2) {
				t.Fatalf("Run: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("reached %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("KBS refused", func(t *testing.T) {
		var got []guestabi.Stage
		s := &Stage{
			Params: testParams(), Fetcher: &fakeFetcher{err: errors.New("kbs: jwe: bad tag")}, Device: img,
			OpenMapper: func() (Mapper, error) { return &fakeMapper{}, nil },
			Mount:      func(string) error { return nil },
			Reached:    func(s guestabi.Stage) { got = append(got, s) },
		}
		if _, err := s.Run(context.Background()); err == nil {
			t.Fatal("Run succeeded without a key")
		}
		if len(got) != 0 {
			t.Errorf("reached %v without a key", got)
		}
	})
	t.Run("no Reached", func(t *testing.T) {
		s := &Stage{
			Params: testParams(), Fetcher: &fakeFetcher{secret: pass}, Device: img,
			OpenMapper: func() (Mapper, error) { return &fakeMapper{}, nil },
			Mount:      func(string) error { return nil },
		}
		if _, err := s.Run(context.Background()); err != nil {
			t.Fatalf("Run without Reached: %v", err)
		}
	})
}
