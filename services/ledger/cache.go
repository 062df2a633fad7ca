package ledger

import (
	"container/list"

	"github.com/securepay/securepay/domain"
)

// aggregate is a cached account or payment with the stream version it was folded up to.
// Exactly one of the two is meaningful, per the stream's prefix.
type aggregate struct {
	stream  string
	account domain.Account
	payment domain.Payment
	version uint64
	// position is the log position of the stream's event at version, so that a state can
	// be labelled with the point of the log it is true at. It is 0 while the state is only
	// decided (a batch in flight) and set when the store has answered.
	position uint64
}

// lru is a bounded cache of aggregates. It is owned by the processor's loop goroutine and
// never shared, so it has no lock. Its cap is what keeps memory bounded whatever the size
// of the log: a payment touched once is evicted by newer ones, hot accounts stay.
type lru struct {
	cap   int
	order *list.List // front = most recently used; values are *aggregate
	index map[string]*list.Element
}

func newLRU(capacity int) *lru {
	return &lru{cap: capacity, order: list.New(), index: make(map[string]*list.Element, capacity)}
}

func (c *lru) get(stream string) (*aggregate, bool) {
	el, ok := c.index[stream]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*aggregate), true
}

func (c *lru) put(a *aggregate) {
	if el, ok := c.index[a.stream]; ok {
		el.Value = a
		c.order.MoveToFront(el)
		return
	}
	c.index[a.stream] = c.order.PushFront(a)
	for c.order.Len() > c.cap {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.index, last.Value.(*aggregate).stream)
	}
}

func (c *lru) remove(stream string) {
	if el, ok := c.index[stream]; ok {
		c.order.Remove(el)
		delete(c.index, stream)
	}
}
