package postgres

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reconnect backoff of the LISTEN connection: doubles from the first value up to the cap.
// Subscribers keep polling meanwhile, so a lost listener only slows wake-ups down.
const (
	listenBackoffFirst = 50 * time.Millisecond
	listenBackoffMax   = 5 * time.Second
)

// startListener starts, once per store and only when someone subscribes, the goroutine
// that holds a dedicated LISTEN connection and turns every notification into a Broadcast
// of the store's Signal. A store used only for appends never holds that connection.
func (s *Store) startListener() {
	s.listen.Do(func() {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.runListener(s.closeCtx)
		}()
	})
}

// runListener reconnects with a capped backoff until the store closes; that is its bound.
func (s *Store) runListener(ctx context.Context) {
	backoff := listenBackoffFirst
	for ctx.Err() == nil {
		// A lost connection is routine (server restart, network): polling covers the gap
		// and we reconnect; there is nobody to return the error to.
		if connected := s.listenOnce(ctx); connected {
			backoff = listenBackoffFirst
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, listenBackoffMax)
	}
}

// listenOnce holds one LISTEN connection until it fails or ctx ends. It reports whether
// it got as far as listening.
func (s *Store) listenOnce(ctx context.Context) bool {
	// Its own connection, not one of the pool's: it is held for the store's lifetime.
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig)
	if err != nil {
		return false
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		return false
	}
	// Commits made while we were not listening sent notifications nobody heard: wake
	// subscribers so they re-read now rather than at their next poll.
	s.signal.Broadcast()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true
		}
		s.announce(n.Payload)
		s.signal.Broadcast()
	}
}

// announce records the position a notification names (append.go sends the last position
// of each commit), if it is beyond every one heard so far. A payload that is not a
// position (a hand-made NOTIFY) is ignored: it still wakes the subscribers.
func (s *Store) announce(payload string) {
	pos, err := strconv.ParseUint(payload, 10, 64)
	if err != nil {
		return
	}
	s.announcePosition(pos)
}

// announcePosition raises announced to pos: the database holds position pos.
func (s *Store) announcePosition(pos uint64) {
	for {
		cur := s.announced.Load()
		if pos <= cur || s.announced.CompareAndSwap(cur, pos) {
			return
		}
	}
}
