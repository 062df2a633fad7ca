package gateway

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
)

// The gateway relays messages; it reads them only to authorise a call. A request that
// came as binary protobuf is decoded once, for the policy, and the very bytes decoded go
// upstream: the component decodes the bytes the policy read, with the same library, so
// the two cannot read one request two ways (duplicate fields, unknown fields: whatever
// the bytes say, both see it). A component's answer goes back as its bytes, decoded only
// when a client asked for JSON or the gateway must change it (ListEndpoints); a write's
// log position is read from the bytes alone (writePosition). Re-encoding every request
// and decoding and re-encoding every answer was CPU for nothing on the hot path.

// frame is one message the gateway relays: the decoded message, the binary protobuf it
// was read from, or both. A frame belongs to one call, used by one goroutine at a time.
type frame[M any] struct {
	// decoded is the message, nil until decoded: a request is decoded on arrival, a
	// component's answer when first needed.
	decoded *M
	// wire is the binary protobuf the frame was read from, a copy the frame owns; valid
	// when fromWire (a message of no fields is zero bytes). A frame built by the gateway,
	// decoded from JSON, or changed after decoding (setMessage) has none, and is encoded
	// when sent.
	wire     []byte
	fromWire bool
}

// frameOf is a frame the gateway builds itself.
func frameOf[M any](m *M) *frame[M] { return &frame[M]{decoded: m} }

// msg is a request's message, which the handlers' codecs decoded before any handler
// ran (an empty body is an empty message). It never returns nil: a frame nothing was
// decoded into reads as an empty message, never as a panic in a handler.
func (f *frame[M]) msg() *M {
	if f.decoded == nil {
		f.decoded = new(M)
	}
	return f.decoded
}

// message returns the decoded message, decoding the wire bytes on first use.
func (f *frame[M]) message() (*M, error) {
	if f.decoded != nil {
		return f.decoded, nil
	}
	m := new(M)
	if f.fromWire {
		if err := proto.Unmarshal(f.wire, protoOf(m)); err != nil {
			return nil, fmt.Errorf("unmarshal into %T: %w", m, err)
		}
	}
	f.decoded = m
	return m, nil
}

// setMessage replaces the message: the wire bytes, which said something else, are
// dropped and the message is encoded when sent.
func (f *frame[M]) setMessage(m *M) {
	f.decoded, f.wire, f.fromWire = m, nil, false
}

// The codecs see frames through relayed.
type relayed interface {
	// protoMessage is the decoded message as a proto.Message (decoding the wire bytes).
	protoMessage() (proto.Message, error)
	// decodeInto resets the frame to a new, empty message and returns it to decode into.
	decodeInto() proto.Message
	// wireBytes are the binary protobuf the frame was read from, if it was.
	wireBytes() ([]byte, bool)
	// keepWire records the binary protobuf the frame was read from (owned by the frame).
	keepWire(b []byte)
}

var _ relayed = (*frame[ledgerv1.TransferRequest])(nil)

func (f *frame[M]) protoMessage() (proto.Message, error) {
	m, err := f.message()
	if err != nil {
		return nil, err
	}
	return protoOf(m), nil
}

func (f *frame[M]) decodeInto() proto.Message {
	f.decoded, f.wire, f.fromWire = new(M), nil, false
	return protoOf(f.decoded)
}

func (f *frame[M]) wireBytes() ([]byte, bool) { return f.wire, f.fromWire }

func (f *frame[M]) keepWire(b []byte) { f.wire, f.fromWire = b, true }

// protoOf is m as a proto.Message. Every M the gateway relays is a generated message
// (checkRelayable, when the routes are built), so the assertion does not fail.
func protoOf[M any](m *M) proto.Message { return any(m).(proto.Message) }

// checkRelayable reports whether *M is a protobuf message, so that protoOf cannot panic.
func checkRelayable[M any]() error {
	if _, ok := any(new(M)).(proto.Message); !ok {
		return fmt.Errorf("gateway: %T is not a protobuf message", new(M))
	}
	return nil
}

// wireCodec is binary protobuf (Connect's "proto": Connect, gRPC and gRPC-web) for the
// gateway's handlers and its clients of the components. It reads a frame's wire bytes
// and writes them back unchanged; any other message (the ownership look-ups' own
// messages) it handles as Connect's own codec does.
type wireCodec struct {
	// decode decodes each frame as it arrives: the handlers' codec, whose requests the
	// policy reads. The clients' codec leaves answers as bytes until needed.
	decode bool
}

var (
	_ connect.Codec = wireCodec{}
	_ interface {
		MarshalAppend([]byte, any) ([]byte, error)
	} = wireCodec{}
)

func (wireCodec) Name() string { return "proto" }

func (c wireCodec) Marshal(v any) ([]byte, error) { return c.MarshalAppend(nil, v) }

// MarshalAppend appends the wire bytes to dst, a buffer Connect owns and recycles: the
// frame's bytes are copied, never handed over.
func (wireCodec) MarshalAppend(dst []byte, v any) ([]byte, error) {
	switch m := v.(type) {
	case relayed:
		if b, ok := m.wireBytes(); ok {
			return append(dst, b...), nil
		}
		pm, err := m.protoMessage()
		if err != nil {
			return nil, err
		}
		return proto.MarshalOptions{}.MarshalAppend(dst, pm)
	case proto.Message:
		return proto.MarshalOptions{}.MarshalAppend(dst, m)
	}
	return nil, errNotProto(v)
}

// Unmarshal copies data, which Connect recycles once Unmarshal returns, into the frame.
func (c wireCodec) Unmarshal(data []byte, v any) error {
	switch m := v.(type) {
	case relayed:
		wire := append([]byte(nil), data...)
		if c.decode {
			pm := m.decodeInto()
			// The bytes decoded are the bytes kept: what the policy reads is what goes on.
			if err := proto.Unmarshal(wire, pm); err != nil {
				return fmt.Errorf("unmarshal into %T: %w", pm, err)
			}
		}
		m.keepWire(wire)
		return nil
	case proto.Message:
		if err := proto.Unmarshal(data, m); err != nil {
			return fmt.Errorf("unmarshal into %T: %w", m, err)
		}
		return nil
	}
	return errNotProto(v)
}

// jsonCodec is Connect's JSON (protojson, unknown fields discarded, as Connect's own) for
// frames: a JSON request is decoded and goes upstream encoded as binary protobuf; an
// answer is decoded from its bytes and written as JSON. name is "json" or
// "json; charset=utf-8", both of which Connect serves.
type jsonCodec struct{ name string }

var _ connect.Codec = jsonCodec{}

func (c jsonCodec) Name() string { return c.name }

func (c jsonCodec) Marshal(v any) ([]byte, error) { return c.MarshalAppend(nil, v) }

func (jsonCodec) MarshalAppend(dst []byte, v any) ([]byte, error) {
	var pm proto.Message
	switch m := v.(type) {
	case relayed:
		var err error
		if pm, err = m.protoMessage(); err != nil {
			return nil, err
		}
	case proto.Message:
		pm = m
	default:
		return nil, errNotProto(v)
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, pm)
}

func (jsonCodec) Unmarshal(data []byte, v any) error {
	var pm proto.Message
	switch m := v.(type) {
	case relayed:
		pm = m.decodeInto()
	case proto.Message:
		pm = m
	default:
		return errNotProto(v)
	}
	if len(data) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", pm, err)
	}
	return nil
}

func errNotProto(v any) error {
	return fmt.Errorf("gateway codec: %T is not a protobuf message", v)
}

// handlerCodecs and hopCodec are the codecs of the gateway's handlers and of its
// clients of the components.
func handlerCodecs() []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithCodec(wireCodec{decode: true}),
		connect.WithCodec(jsonCodec{name: "json"}),
		connect.WithCodec(jsonCodec{name: "json; charset=utf-8"}),
	}
}

func hopCodec() connect.ClientOption { return connect.WithCodec(wireCodec{}) }

// resultField is the field of a write's answer (M) that holds its WriteResult, and the
// WriteResult's position field; ok is false for answers without one (reads).
func resultField[M any]() (result, position protowire.Number, ok bool) {
	fields := protoOf(new(M)).ProtoReflect().Descriptor().Fields()
	fd := fields.ByName("result")
	want := (&ledgerv1.WriteResult{}).ProtoReflect().Descriptor()
	if fd == nil || fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.Message().FullName() != want.FullName() {
		return 0, 0, false
	}
	return fd.Number(), want.Fields().ByName("position").Number(), true
}

// writePosition reads a write answer's WriteResult.position from its binary protobuf,
// as proto.Unmarshal would: a message field that occurs more than once is merged, so
// the last position in any of them wins. ok is false for bytes that are not protobuf.
func writePosition(wire []byte, result, position protowire.Number) (pos uint64, ok bool) {
	for len(wire) > 0 {
		num, typ, n := protowire.ConsumeTag(wire)
		if n < 0 {
			return 0, false
		}
		wire = wire[n:]
		if num == result && typ == protowire.BytesType {
			inner, n := protowire.ConsumeBytes(wire)
			if n < 0 {
				return 0, false
			}
			wire = wire[n:]
			for len(inner) > 0 {
				inum, ityp, m := protowire.ConsumeTag(inner)
				if m < 0 {
					return 0, false
				}
				inner = inner[m:]
				if inum == position && ityp == protowire.VarintType {
					v, m := protowire.ConsumeVarint(inner)
					if m < 0 {
						return 0, false
					}
					pos, inner = v, inner[m:]
					continue
				}
				if m = protowire.ConsumeFieldValue(inum, ityp, inner); m < 0 {
					return 0, false
				}
				inner = inner[m:]
			}
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, wire); n < 0 {
			return 0, false
		}
		wire = wire[n:]
	}
	return pos, true
}
