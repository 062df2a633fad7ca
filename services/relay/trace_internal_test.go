package relay

import (
	"errors"
	"fmt"
	"testing"

	"github.com/IBM/sarama"
)

// A batch's done is called once, when the acknowledged run covers its last event, or with
// the session's error when the session ends first; never for a batch still partly unacked.
func TestTracedBatchesEndOnceInOrder(t *testing.T) {
	var tb tracedBatches
	var ended []string
	for _, last := range []uint64{10, 20, 30} {
		tb.add(last, func(err error) { ended = append(ended, fmt.Sprintf("%d:%v", last, err)) })
	}
	steps := []struct {
		acked uint64
		want  string
	}{
		{5, "[]"},
		{10, "[10:<nil>]"},
		{19, "[10:<nil>]"},
		{25, "[10:<nil> 20:<nil>]"},
		{25, "[10:<nil> 20:<nil>]"},
	}
	for _, s := range steps {
		tb.acked(s.acked)
		if got := fmt.Sprint(ended); got != s.want {
			t.Fatalf("after acked(%d): ended %s, want %s", s.acked, got, s.want)
		}
	}
	tb.abandon(errors.New("broker gone"))
	tb.abandon(errors.New("twice"))
	tb.acked(100)
	if got, want := fmt.Sprint(ended), "[10:<nil> 20:<nil> 30:broker gone]"; got != want {
		t.Fatalf("after abandon: ended %s, want %s", got, want)
	}
}

// The tracer's traceparent replaces the event's own header, or is added when it had none.
func TestSetTraceParent(t *testing.T) {
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	for _, headers := range [][]sarama.RecordHeader{
		nil,
		{{Key: []byte(HeaderEventID), Value: []byte("e1")}, {Key: []byte(HeaderTraceParent), Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")}},
	} {
		msg := &sarama.ProducerMessage{Headers: headers}
		setTraceParent(msg, tp)
		n := 0
		for _, h := range msg.Headers {
			if string(h.Key) == HeaderTraceParent {
				n++
				if string(h.Value) != tp {
					t.Errorf("traceparent header %q, want %q", h.Value, tp)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d traceparent headers, want 1", n)
		}
	}
}
