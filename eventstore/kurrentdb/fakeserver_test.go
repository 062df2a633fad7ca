package kurrentdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	kdb "github.com/kurrent-io/KurrentDB-Client-Go/kurrentdb"
	"github.com/kurrent-io/KurrentDB-Client-Go/protos/kurrentdb/protocols/v1/serverfeatures"
	"github.com/kurrent-io/KurrentDB-Client-Go/protos/kurrentdb/protocols/v1/shared"
	api "github.com/kurrent-io/KurrentDB-Client-Go/protos/kurrentdb/protocols/v1/streams"
	streamErrors "github.com/kurrent-io/KurrentDB-Client-Go/protos/kurrentdb/protocols/v2/streams/errors"
	apiV2 "github.com/kurrent-io/KurrentDB-Client-Go/protos/kurrentdb/protocols/v2/streams/streams"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeKurrent is an in-memory MODEL of the small part of KurrentDB's gRPC protocol this
// package uses (server features, stream reads and catch-up subscriptions, single-stream
// appends, MultiStreamAppend), served on a loopback port to the real client library.
//
// It is not KurrentDB and proves nothing about KurrentDB: it encodes our reading of the
// protocol (the client's source and its own tests), so tests against it exercise this
// package's logic (planning, retries, conflict naming, outcome resolution, read assembly)
// through the real client, and the real wire encoding, but not the server's behaviour. The
// conformance suite against a real server (SECUREPAY_KURRENTDB_URL) is the proof.
//
// Where the real server's choice is undocumented, the model takes the choice that is
// harder for the store: a MultiStreamAppend with several failing expectations reports the
// LAST failing stream (so the store must find the first itself), and the log stream comes
// last in every request.
type fakeKurrent struct {
	serverfeatures.UnimplementedServerFeaturesServer
	api.UnimplementedStreamsServer
	apiV2.UnimplementedStreamsServiceServer

	mu      sync.Mutex
	streams map[string][]fakeEvent
	commit  uint64        // last $all commit position handed out
	changed chan struct{} // closed and replaced at every commit, to wake subscriptions

	// Fault injection for MultiStreamAppend, counted down per request.
	failBeforeCommit atomic.Int32 // answer DeadlineExceeded without committing
	failAfterCommit  atomic.Int32 // commit, then answer DeadlineExceeded
	appendSessions   atomic.Int64 // MultiStreamAppend requests received
}

type fakeEvent struct {
	id       uuid.UUID
	typ      string
	data     []byte
	userMeta []byte
	revision uint64
	commit   uint64
}

// startFakeKurrent serves a fresh model on a loopback port until the test ends and returns
// a connection string for it.
func startFakeKurrent(tb testing.TB) (*fakeKurrent, string) {
	tb.Helper()
	f := &fakeKurrent{streams: map[string][]fakeEvent{}, changed: make(chan struct{})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("fake KurrentDB: listen on loopback: %v", err)
	}
	// A server configured for the largest appends the contract allows (10,000 events);
	// see the package comment on MaxAppendSize.
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(256 << 20))
	serverfeatures.RegisterServerFeaturesServer(srv, f)
	api.RegisterStreamsServer(srv, f)
	apiV2.RegisterStreamsServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	tb.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f, "kurrentdb://" + lis.Addr().String() + "?tls=false"
}

func (f *fakeKurrent) GetSupportedMethods(context.Context, *shared.Empty) (*serverfeatures.SupportedMethods, error) {
	return &serverfeatures.SupportedMethods{
		EventStoreServerVersion: "25.1.0",
		Methods: []*serverfeatures.SupportedMethod{
			{MethodName: "read", ServiceName: "event_store.client.streams.streams"},
			{MethodName: "append", ServiceName: "event_store.client.streams.streams"},
			{MethodName: "appendsession", ServiceName: "kurrentdb.protocol.v2.streams.streamsservice"},
		},
	}, nil
}

// commitLocked appends events to a stream; f.mu must be held.
func (f *fakeKurrent) commitLocked(stream string, evs []fakeEvent) {
	cur := f.streams[stream]
	for _, e := range evs {
		f.commit++
		e.revision = uint64(len(cur))
		e.commit = f.commit
		cur = append(cur, e)
	}
	f.streams[stream] = cur
}

func (f *fakeKurrent) wakeLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// stateMatches is KurrentDB's optimistic check; raw is the wire form of an expected state.
func stateMatches(raw int64, events int) bool {
	switch raw {
	case -2: // any
		return true
	case -1: // no stream
		return events == 0
	case -4: // stream exists
		return events > 0
	default:
		return raw >= 0 && uint64(events) == uint64(raw)+1
	}
}

func actualRaw(events int) int64 {
	if events == 0 {
		return -1
	}
	return int64(events - 1)
}

func (f *fakeKurrent) AppendSession(session grpc.ClientStreamingServer[apiV2.AppendRequest, apiV2.AppendSessionResponse]) error {
	f.appendSessions.Add(1)
	var reqs []*apiV2.AppendRequest
	for {
		r, err := session.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		reqs = append(reqs, r)
	}
	if f.failBeforeCommit.Add(-1) >= 0 {
		return status.Error(codes.DeadlineExceeded, "fake: deadline exceeded before commit")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var failed *streamErrors.StreamRevisionConflictErrorDetails
	for _, r := range reqs {
		expected := int64(-2)
		if r.ExpectedRevision != nil {
			expected = *r.ExpectedRevision
		}
		if n := len(f.streams[r.Stream]); !stateMatches(expected, n) {
			failed = &streamErrors.StreamRevisionConflictErrorDetails{Stream: r.Stream, ExpectedRevision: expected, ActualRevision: actualRaw(n)}
		}
	}
	if failed != nil {
		st, err := status.New(codes.FailedPrecondition, "fake: stream revision conflict").WithDetails(failed)
		if err != nil {
			return err
		}
		return st.Err()
	}
	out := &apiV2.AppendSessionResponse{}
	for _, r := range reqs {
		evs := make([]fakeEvent, len(r.Records))
		for i, rec := range r.Records {
			props := map[string]string{"$schema.format": "Bytes", "$schema.name": rec.GetSchema().GetName()}
			for k, v := range rec.Properties {
				props[k] = v.GetStringValue()
			}
			meta, err := json.Marshal(props)
			if err != nil {
				return err
			}
			id, err := uuid.Parse(rec.GetRecordId())
			if err != nil {
				return status.Errorf(codes.InvalidArgument, "fake: record id %q: %v", rec.GetRecordId(), err)
			}
			evs[i] = fakeEvent{id: id, typ: rec.GetSchema().GetName(), data: rec.Data, userMeta: meta}
		}
		f.commitLocked(r.Stream, evs)
		out.Output = append(out.Output, &apiV2.AppendResponse{Stream: r.Stream, StreamRevision: int64(len(f.streams[r.Stream]) - 1)})
	}
	out.Position = int64(f.commit)
	f.wakeLocked()
	if f.failAfterCommit.Add(-1) >= 0 {
		return status.Error(codes.DeadlineExceeded, "fake: deadline exceeded after commit")
	}
	return session.SendAndClose(out)
}

func (f *fakeKurrent) Append(stream grpc.ClientStreamingServer[api.AppendReq, api.AppendResp]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	opts := first.GetOptions()
	if opts == nil {
		return status.Error(codes.InvalidArgument, "fake: append without options")
	}
	name := string(opts.GetStreamIdentifier().GetStreamName())
	expected := int64(-2)
	switch e := opts.ExpectedStreamRevision.(type) {
	case *api.AppendReq_Options_Revision:
		expected = int64(e.Revision)
	case *api.AppendReq_Options_NoStream:
		expected = -1
	case *api.AppendReq_Options_StreamExists:
		expected = -4
	}
	var evs []fakeEvent
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		pm := m.GetProposedMessage()
		s := pm.GetId().GetStructured()
		id, err := kdb.ParseUUIDFromInt64(s.GetMostSignificantBits(), s.GetLeastSignificantBits())
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "fake: event id: %v", err)
		}
		evs = append(evs, fakeEvent{id: id, typ: pm.GetMetadata()["type"], data: pm.GetData(), userMeta: pm.GetCustomMetadata()})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.streams[name])
	if !stateMatches(expected, n) {
		w := &api.AppendResp_WrongExpectedVersion{}
		if n == 0 {
			w.CurrentRevisionOption = &api.AppendResp_WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &shared.Empty{}}
		} else {
			w.CurrentRevisionOption = &api.AppendResp_WrongExpectedVersion_CurrentRevision{CurrentRevision: uint64(n - 1)}
		}
		switch expected {
		case -1:
			w.ExpectedRevisionOption = &api.AppendResp_WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &shared.Empty{}}
		case -4:
			w.ExpectedRevisionOption = &api.AppendResp_WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &shared.Empty{}}
		default:
			w.ExpectedRevisionOption = &api.AppendResp_WrongExpectedVersion_ExpectedRevision{ExpectedRevision: uint64(expected)}
		}
		return stream.SendAndClose(&api.AppendResp{Result: &api.AppendResp_WrongExpectedVersion_{WrongExpectedVersion: w}})
	}
	f.commitLocked(name, evs)
	f.wakeLocked()
	return stream.SendAndClose(&api.AppendResp{Result: &api.AppendResp_Success_{Success: &api.AppendResp_Success{
		CurrentRevisionOption: &api.AppendResp_Success_CurrentRevision{CurrentRevision: uint64(len(f.streams[name]) - 1)},
		PositionOption:        &api.AppendResp_Success_Position{Position: &api.AppendResp_Position{CommitPosition: f.commit, PreparePosition: f.commit}},
	}}})
}

func toReadEvent(stream string, e fakeEvent) *api.ReadResp {
	return &api.ReadResp{Content: &api.ReadResp_Event{Event: &api.ReadResp_ReadEvent{
		Event: &api.ReadResp_ReadEvent_RecordedEvent{
			Id:               &shared.UUID{Value: &shared.UUID_String_{String_: e.id.String()}},
			StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(stream)},
			StreamRevision:   e.revision,
			PreparePosition:  e.commit,
			CommitPosition:   e.commit,
			Metadata: map[string]string{
				"type":         e.typ,
				"content-type": "application/octet-stream",
				"created":      strconv.FormatInt(time.Now().UnixNano()/100, 10), // .NET ticks since the Unix epoch
			},
			CustomMetadata: e.userMeta,
			Data:           e.data,
		},
		Position: &api.ReadResp_ReadEvent_CommitPosition{CommitPosition: e.commit},
	}}}
}

func (f *fakeKurrent) Read(req *api.ReadReq, out grpc.ServerStreamingServer[api.ReadResp]) error {
	opts := req.GetOptions()
	so := opts.GetStream()
	if so == nil {
		return status.Error(codes.Unimplemented, "fake: only stream reads are modelled")
	}
	name := string(so.GetStreamIdentifier().GetStreamName())
	if opts.GetSubscription() != nil {
		return f.subscribe(name, so, out)
	}
	f.mu.Lock()
	evs := f.streams[name]
	f.mu.Unlock()
	if len(evs) == 0 {
		return out.Send(&api.ReadResp{Content: &api.ReadResp_StreamNotFound_{StreamNotFound: &api.ReadResp_StreamNotFound{StreamIdentifier: so.GetStreamIdentifier()}}})
	}
	count := opts.GetCount()
	backwards := opts.GetReadDirection() == api.ReadReq_Options_Backwards
	var from int64
	switch r := so.RevisionOption.(type) {
	case *api.ReadReq_Options_StreamOptions_Revision:
		from = int64(min(r.Revision, uint64(len(evs))))
	case *api.ReadReq_Options_StreamOptions_End:
		from = int64(len(evs)) - 1
	default:
		from = 0
	}
	for sent := uint64(0); sent < count; sent++ {
		i := from + int64(sent)
		if backwards {
			i = from - int64(sent)
		}
		if i < 0 || i >= int64(len(evs)) {
			break
		}
		if err := out.Send(toReadEvent(name, evs[i])); err != nil {
			return err
		}
	}
	return nil
}

// subscribe models a catch-up subscription to one stream: confirmation, then every event
// after the start point as it commits, until the client goes away.
func (f *fakeKurrent) subscribe(name string, so *api.ReadReq_Options_StreamOptions, out grpc.ServerStreamingServer[api.ReadResp]) error {
	if err := out.Send(&api.ReadResp{Content: &api.ReadResp_Confirmation{Confirmation: &api.ReadResp_SubscriptionConfirmation{SubscriptionId: uuid.NewString()}}}); err != nil {
		return err
	}
	f.mu.Lock()
	next := 0
	switch r := so.RevisionOption.(type) {
	case *api.ReadReq_Options_StreamOptions_End:
		next = len(f.streams[name])
	case *api.ReadReq_Options_StreamOptions_Revision:
		next = int(r.Revision) + 1
	}
	f.mu.Unlock()
	for {
		f.mu.Lock()
		evs := f.streams[name]
		wait := f.changed
		f.mu.Unlock()
		for ; next < len(evs); next++ {
			if err := out.Send(toReadEvent(name, evs[next])); err != nil {
				return err
			}
		}
		select {
		case <-out.Context().Done():
			return out.Context().Err()
		case <-wait:
		}
	}
}

// stream returns a copy of a stream's events, for assertions.
func (f *fakeKurrent) stream(name string) []fakeEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeEvent(nil), f.streams[name]...)
}

// fakeLocationPrefix marks a storetest location on a fake server: "fake:<url>#<namespace>",
// so that a crash child process can reach the parent's fake server.
const fakeLocationPrefix = "fake:"

func fakeLocation(url, namespace string) string { return fakeLocationPrefix + url + "#" + namespace }

func openFakeLocation(location string) (*Store, error) {
	rest, ok := strings.CutPrefix(location, fakeLocationPrefix)
	i := strings.LastIndexByte(rest, '#')
	if !ok || i < 0 {
		return nil, fmt.Errorf("location %q is not %s<url>#<namespace>", location, fakeLocationPrefix)
	}
	return openNamespace(rest[:i], rest[i+1:])
}
