package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Command is a securepay command, or a group of subcommands, in the spirit of cmd/go's
// base.Command. Its usage line, help text, flags and positional arguments are declared
// once, here; `securepay help`, `-h`, the argument checks and the usage errors all read
// them from it.
type Command struct {
	// UsageLine is "securepay", the command's words, then its positional arguments and its
	// flags: "securepay capture PAYMENT_ID (--amount AMOUNT | --full) [flags]". The
	// lowercase words after "securepay" are the command's name.
	UsageLine string
	// Short is the line the parent's help lists the command with.
	Short string
	// Long is the command's help text; Short when empty.
	Long string
	// Flag holds the command's flags. They may come before, between or after its
	// arguments (`account open alice --asset USD`).
	Flag flag.FlagSet
	// Args are the positional arguments UsageLine names, in order, optional ones last.
	Args []Arg
	// Run runs the command once its flags are parsed and its arguments counted. It is nil
	// for a group, which only leads to its subcommands.
	Run func(ctx context.Context, e env, args []string) error
	// Commands are the subcommands, in the order help lists them.
	Commands []*Command
}

// Arg is a positional argument of a command.
type Arg struct {
	Name     string // as UsageLine spells it: ACCOUNT_ID
	Optional bool
	// Missing is what to tell a user who left it out; "missing NAME" when empty.
	Missing string
}

// LongName is the command's words: "account open".
func (c *Command) LongName() string {
	words := strings.Fields(c.UsageLine)
	n := 1
	for n < len(words) && isCommandWord(words[n]) {
		n++
	}
	return strings.Join(words[1:n], " ")
}

// Name is the command's last word: "open".
func (c *Command) Name() string {
	long := c.LongName()
	return long[strings.LastIndex(long, " ")+1:]
}

func isCommandWord(w string) bool {
	if w == "" || w[0] < 'a' || w[0] > 'z' {
		return false
	}
	return strings.Trim(w, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

func (c *Command) lookup(name string) *Command {
	for _, s := range c.Commands {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

// execute runs c with the arguments that follow its name.
func (c *Command) execute(ctx context.Context, e env, args []string) error {
	if len(c.Commands) > 0 {
		sub, rest, word, help := c.split(args)
		switch {
		case help:
			c.printUsage(e.stdout)
			return nil
		case sub != nil:
			return sub.execute(ctx, e, rest)
		case c.Run == nil && word == "":
			return usageError{fmt.Sprintf("%s: say %s", c.LongName(), c.subcommandNames()), c}
		case c.Run == nil:
			return usageError{fmt.Sprintf("%s: unknown verb %q: say %s", c.LongName(), word, c.subcommandNames()), c}
		}
	}
	// Parse errors come back as usage errors, reported once by main; -h prints the usage
	// on stdout, since the user asked for it.
	c.Flag.SetOutput(io.Discard)
	c.Flag.Usage = func() {}
	args, err := parseInterleaved(&c.Flag, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.printUsage(e.stdout)
		return nil
	case err != nil:
		err = usagef("%s: %v", c.LongName(), err)
	default:
		err = c.checkArgs(args)
	}
	if err == nil {
		err = c.Run(ctx, e, args)
	}
	// Annotated only when bare, so that it stays a usageError rather than one wrapped.
	if u, ok := err.(usageError); ok && u.cmd == nil {
		u.cmd = c
		err = u
	}
	if err != nil && wantsJSON(&c.Flag) {
		err = jsonError{err}
	}
	return err
}

// split finds the subcommand args name: the first argument that is neither a flag nor a
// flag's value, so that flags may also come first (`audit --dir D verify`), as they could
// before subcommands had their own flags. word is that argument ("" if there is none),
// rest the arguments without it; help reports -h or --help before it.
func (c *Command) split(args []string) (sub *Command, rest []string, word string, help bool) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return nil, nil, "", false
		case !strings.HasPrefix(a, "-") || a == "-":
			if sub = c.lookup(a); sub != nil {
				rest = append(slices.Clone(args[:i]), args[i+1:]...)
			}
			return sub, rest, a, false
		case isHelpFlag(a):
			return nil, nil, "", true
		}
		if name, _, inline := strings.Cut(strings.TrimLeft(a, "-"), "="); !inline && c.flagTakesValue(name) {
			i++
		}
	}
	return nil, nil, "", false
}

// flagTakesValue says whether the flag name, wherever c or its subcommands define it, is
// followed by a value.
func (c *Command) flagTakesValue(name string) bool {
	if f := c.Flag.Lookup(name); f != nil {
		b, ok := f.Value.(interface{ IsBoolFlag() bool })
		return !ok || !b.IsBoolFlag()
	}
	for _, s := range c.Commands {
		if s.flagTakesValue(name) {
			return true
		}
	}
	return false
}

func isHelpFlag(a string) bool {
	return a == "-h" || a == "--h" || a == "-help" || a == "--help"
}

func (c *Command) subcommandNames() string {
	names := make([]string, len(c.Commands))
	for i, s := range c.Commands {
		names[i] = s.Name()
	}
	if len(names) == 1 {
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func (c *Command) checkArgs(args []string) error {
	if len(args) > len(c.Args) {
		if len(c.Args) == 0 {
			return usagef("%s takes no argument, got %q", c.LongName(), args[0])
		}
		return usagef("%s: unexpected argument %q", c.LongName(), args[len(c.Args)])
	}
	for _, a := range c.Args[len(args):] {
		switch {
		case a.Optional:
		case a.Missing != "":
			return usagef("%s: %s", c.LongName(), a.Missing)
		default:
			return usagef("%s: missing %s", c.LongName(), a.Name)
		}
	}
	return nil
}

// parseInterleaved parses flags that may come before, between or after positional
// arguments, which flag.FlagSet alone does not allow. Each round consumes at least one
// argument, so it ends.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// printUsage is the command's help: usage line, text, subcommands and flags.
func (c *Command) printUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s\n", c.UsageLine)
	if c.LongName() == "" {
		// The list of every command fits a screen with one line each.
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, s := range c.Commands {
			fmt.Fprintf(tw, "  %s\t%s\n", s.Name(), s.Short)
		}
		tw.Flush()
		fmt.Fprintf(w, "\n%s\n", c.Long)
		return
	}
	text := c.Long
	if text == "" && c.Short != "" {
		text = strings.ToUpper(c.Short[:1]) + c.Short[1:] + "."
	}
	fmt.Fprintf(w, "\n%s\n", text)
	if len(c.Commands) > 0 {
		fmt.Fprintf(w, "\nSubcommands:\n")
		for _, s := range c.Commands {
			fmt.Fprintf(w, "  %s\n    \t%s\n", s.UsageLine, s.Short)
		}
	}
	if offersFlags(&c.Flag) {
		fmt.Fprintf(w, "\nFlags:\n")
		printFlags(w, &c.Flag)
	}
	if len(c.Commands) > 0 {
		fmt.Fprintf(w, "\nRun `securepay help %s SUBCOMMAND` for a subcommand's arguments and flags.\n", c.LongName())
	}
}

// printFlags lists the flags the way flag.PrintDefaults does, spelt as usage lines spell
// them: --name VALUE. A flag's usage string may name its value in backquotes ("the
// `directory` of ...": --dir DIRECTORY); flag.UnquoteUsage takes any other backquoted
// text for that name too, so usage strings have no other backquotes.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		if isHidden(f) {
			return
		}
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", strings.ToUpper(name))
		}
		fmt.Fprintf(w, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		switch f.DefValue {
		case "", "0", "false", "0s":
		default:
			if g, ok := f.Value.(flag.Getter); ok {
				if _, isString := g.Get().(string); isString {
					fmt.Fprintf(w, " (default %q)", f.DefValue)
					break
				}
			}
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

func offersFlags(fs *flag.FlagSet) bool {
	offers := false
	fs.VisitAll(func(f *flag.Flag) { offers = offers || !isHidden(f) })
	return offers
}

// hiddenValue is a flag that is still accepted, so that command lines written when it was
// offered keep working or get a useful answer, but that help no longer offers.
type hiddenValue struct{ flag.Value }

// IsBoolFlag keeps a hidden boolean flag usable without a value.
func (h hiddenValue) IsBoolFlag() bool {
	b, ok := h.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// hide withdraws the flag name from help; it must be defined.
func hide(fs *flag.FlagSet, name string) {
	f := fs.Lookup(name)
	f.Value = hiddenValue{f.Value}
}

func isHidden(f *flag.Flag) bool {
	_, ok := f.Value.(hiddenValue)
	return ok
}

// wantsJSON says whether the command line asked for --json.
func wantsJSON(fs *flag.FlagSet) bool {
	f := fs.Lookup("json")
	return f != nil && f.Value.String() == "true"
}

// helpCommand prints the help of root or of the command its arguments name.
func helpCommand(root *Command) *Command {
	h := &helpCmd{root: root}
	return &Command{
		UsageLine: "securepay help [COMMAND] [SUBCOMMAND]",
		Short:     "show how to use securepay, or one of its commands",
		Args:      []Arg{{Name: "COMMAND", Optional: true}, {Name: "SUBCOMMAND", Optional: true}},
		Run:       h.run,
	}
}

type helpCmd struct{ root *Command }

func (h *helpCmd) run(_ context.Context, e env, args []string) error {
	c := h.root
	for _, name := range args {
		sub := c.lookup(name)
		if sub == nil {
			// The message says where the list is; the report adds no usage line of its own.
			return usageError{fmt.Sprintf("help: unknown command %q: run `securepay help` for the list", strings.TrimSpace(c.LongName()+" "+name)), h.root}
		}
		c = sub
	}
	c.printUsage(e.stdout)
	return nil
}
