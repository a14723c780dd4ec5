# A small stand-in for the NixOS module system, for checking the modules on
# machines without nixpkgs (CI here): it implements the handful of `lib`
# functions the modules use, collects option defaults, applies the caller's
# settings, and resolves `mkIf`. Not a replacement for evaluating against
# nixpkgs (`nix flake check` does that), but it catches typos, evaluation
# errors, and lets tests inspect the rendered settings and unit.
#
#   nix-instantiate --eval --strict --json nixos/tests/stub-eval.nix \
#     --arg module ./nixos/modules/gateway.nix --arg userConfig '{ ... }' -A unit
{ module, userConfig, serviceName }:

let
  isOption = v: builtins.isAttrs v && (v._type or null) == "option";

  types = rec {
    bool = { name = "bool"; };
    str = { name = "str"; };
    int = { name = "int"; };
    port = { name = "port"; };
    path = { name = "path"; };
    package = { name = "package"; };
    lines = { name = "lines"; };
    attrs = { name = "attrs"; };
    listOf = t: { name = "listOf"; of = t; };
    attrsOf = t: { name = "attrsOf"; of = t; };
    nullOr = t: { name = "nullOr"; of = t; };
    enum = values: { name = "enum"; inherit values; };
    submodule = m: { name = "submodule"; };
  };

  lib = rec {
    inherit types;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = what: mkOption { type = types.bool; default = false; description = "Whether to enable ${what}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkDefault = v: v;
    mkForce = v: v;
    optionalAttrs = c: a: if c then a else { };
    optional = c: v: if c then [ v ] else [ ];
    optionals = c: l: if c then l else [ ];
    optionalString = c: s: if c then s else "";
    concatStringsSep = builtins.concatStringsSep;
    mapAttrs = builtins.mapAttrs;
    recursiveUpdate = lhs: rhs:
      lhs // builtins.mapAttrs
        (n: v: if builtins.isAttrs v && builtins.isAttrs (lhs.${n} or null) && !(v ? outPath) then recursiveUpdate lhs.${n} v else v)
        rhs;
  };

  # pkgs.formats.toml: `generate` returns a store-path-like value whose
  # `value` the tests read back (the real one runs remarshal).
  pkgs = {
    formats.toml = { }: {
      type = types.attrs;
      generate = name: value: {
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        inherit value;
      };
    };
    util-linux = { outPath = "/nix/store/00000000000000000000000000000000-util-linux"; };
    coreutils = { outPath = "/nix/store/00000000000000000000000000000000-coreutils"; };
    system = "x86_64-linux";
  };

  defaultsOf = opts:
    if isOption opts then (opts.default or null)
    else builtins.mapAttrs (_: defaultsOf) opts;

  evaluated = (import module) { inherit lib pkgs config; };
  config = lib.recursiveUpdate (defaultsOf evaluated.options) userConfig;

  resolve = v:
    if builtins.isAttrs v && (v._type or null) == "if" then (if v.condition then resolve v.content else { })
    else if builtins.isAttrs v && !(v ? outPath) then builtins.mapAttrs (_: resolve) v
    else v;

  resolved = resolve evaluated.config;
  service = resolved.systemd.services.${serviceName};
in
{
  config = resolved;
  # What the tests render into a unit file.
  unit = {
    inherit (service) description serviceConfig;
    after = service.after or [ ];
    wants = service.wants or [ ];
    wantedBy = service.wantedBy or [ ];
  };
  etc = builtins.mapAttrs (_: e: e.source.value or e.source) (resolved.environment.etc or { });
}
