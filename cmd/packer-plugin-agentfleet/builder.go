package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/agentfleet/agentfleet/builder"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/hashicorp/hcl/v2/hcldec"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
)

// BuilderID names the artifacts this plugin makes.
const BuilderID = "agentfleet.image"

// Builder is the Packer face of builder.Build: Prepare turns the source
// block into builder.Options and checks them exactly as `fleet image
// build` does; Run bakes, verifies, stores and promotes the image.
type Builder struct {
	config Config
	build  builder.Config
}

func (b *Builder) ConfigSpec() hcldec.ObjectSpec { return b.config.FlatMapstructure().HCL2Spec() }

func (b *Builder) Prepare(raws ...any) ([]string, []string, error) {
	err := config.Decode(&b.config, &config.DecodeOpts{
		PluginType:         BuilderID,
		Interpolate:        true,
		InterpolateContext: &b.config.ctx,
	}, raws...)
	if err != nil {
		return nil, nil, err
	}
	if b.config.ImageName == "" {
		return nil, nil, errors.New("image_name is required (ubuntu-24.04 or debian-12)")
	}
	home := b.config.FleetHome
	if home == "" {
		if home, err = layout.Home(); err != nil {
			return nil, nil, err
		}
	}
	c := b.config
	b.build, err = builder.Options{
		Name: c.ImageName, Mirror: c.Mirror, SourceURL: c.SourceURL, ChecksumURL: c.ChecksumURL,
		Arch: c.Arch, Recipe: c.Recipe, ClaudeVersion: c.ClaudeVersion, NpmRegistry: c.NpmRegistry, NodeVersion: c.NodeVersion,
		Outputs: c.Outputs, ScriptFiles: c.Scripts, CACertFiles: c.CACerts, NoHostCA: c.NoHostCA, IfChanged: c.IfChanged,
		// `packer build -on-error=abort` keeps what failed, as --keep-on-failure does.
		KeepOnFailure: c.PackerOnError == "abort",
		Home:          home, CacheDir: c.CacheDir, Accel: c.Accelerator, BootTimeout: c.BootTimeout,
	}.Config()
	if err != nil {
		return nil, nil, err
	}
	return nil, nil, nil
}

func (b *Builder) Run(ctx context.Context, ui packersdk.Ui, hook packersdk.Hook) (packersdk.Artifact, error) {
	// The recipe is the whole provisioning, and its hash names the image
	// (the cache and --if-changed trust it), so provisioner blocks that
	// would change the disk behind the hash's back are refused before
	// anything is built.
	if err := refuseProvisioners(ctx, ui, hook); err != nil {
		return nil, err
	}
	progress := &uiWriter{ui: ui}
	cfg := b.build
	cfg.Progress = progress
	if cfg.Accel == "tcg" {
		ui.Say("no hardware virtualization: using TCG software emulation, the build will be slow")
	}
	res, err := builder.Build(ctx, cfg)
	progress.Flush()
	if err != nil {
		return nil, err
	}
	if res.Skipped {
		ui.Say(fmt.Sprintf("%s@%s is up to date: recipe, source and versions unchanged, nothing built", res.Image.Name, res.Image.Version))
	}
	return &Artifact{Image: res.Image, Outputs: res.Outputs, Skipped: res.Skipped}, nil
}

// uiWriter turns the builder's progress lines into ui.Say calls; a
// carriage return (a download's progress line redrawn) ends a line too.
type uiWriter struct {
	ui  packersdk.Ui
	mu  sync.Mutex
	buf []byte
}

func (w *uiWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range p {
		if c == '\n' || c == '\r' {
			w.flushLocked()
			continue
		}
		w.buf = append(w.buf, c)
	}
	return len(p), nil
}

func (w *uiWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushLocked()
}

func (w *uiWriter) flushLocked() {
	if line := strings.TrimRight(string(w.buf), " "); line != "" {
		w.ui.Say(line)
	}
	w.buf = w.buf[:0]
}

var _ io.Writer = (*uiWriter)(nil)
