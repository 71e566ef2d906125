"""Shell completion scripts for ``pykv``, generated from its argument parser.

``pykv completion bash`` and ``pykv completion zsh`` print a script that completes commands,
their options, and keys: a key argument is completed one level at a time from the store the
command line names (``pykv ls DIR``, with a 2 s timeout; errors complete nothing).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

__all__ = ["completion_script"]

#: Positional arguments completed with keys from the store.
_KEY_ARGS = frozenset({"key", "keys", "prefix"})


@dataclass
class _Command:
    name: str
    help: str
    flags: list[str] = field(default_factory=list)  # options that take no value
    valued: list[str] = field(default_factory=list)  # options that take a value
    choices: dict[str, list[str]] = field(default_factory=dict)  # option or positional -> values
    keys: bool = False  # some positional is a key
    runs_command: bool = False  # ``lock``: a command line follows ``--``
    option_help: dict[str, str] = field(default_factory=dict)
    positionals: list[argparse.Action] = field(default_factory=list)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError("the pykv parser has no commands")


def _describe(parser: argparse.ArgumentParser, name: str, help_text: str) -> _Command:
    cmd = _Command(name, help_text)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            cmd.flags.extend(action.option_strings)
            for opt in action.option_strings:
                cmd.option_help[opt] = "show help"
            continue
        if action.option_strings:
            (cmd.flags if action.nargs == 0 else cmd.valued).extend(action.option_strings)
            for opt in action.option_strings:
                cmd.option_help[opt] = action.help or ""
                if action.choices:
                    cmd.choices[opt] = [str(c) for c in action.choices]
        elif not isinstance(action, argparse._SubParsersAction):
            cmd.positionals.append(action)
            if action.dest in _KEY_ARGS:
                cmd.keys = True
            if action.dest == "command":
                cmd.runs_command = True
            if action.choices:
                cmd.choices[action.dest] = [str(c) for c in action.choices]
    return cmd


def _model(parser: argparse.ArgumentParser) -> tuple[_Command, list[_Command]]:
    sub = _subparsers(parser)
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    top = _describe(parser, "pykv", "")
    commands = [_describe(p, name, helps.get(name, "")) for name, p in sub.choices.items()]
    return top, commands


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (``bash`` or ``zsh``)."""
    top, commands = _model(parser)
    if shell == "bash":
        return _bash(top, commands)
    if shell == "zsh":
        return _zsh(top, commands)
    raise ValueError(f"no completion for the shell {shell!r}; pykv completes bash and zsh")


# -- bash ------------------------------------------------------------------------------------

_BASH = r"""# bash completion for pykv. Load it with:  source <(pykv completion bash)
_pykv_keys() {
    # Keys one level at a time: the children of the directory typed so far.
    local cur="$1" dir="" names name
    [[ "$cur" == */* ]] && dir="${cur%/*}"
    names=$(pykv ${_pykv_store:+--store "$_pykv_store"} --timeout 2 ls -- "$dir" 2>/dev/null) \
        || return 0
    local IFS=$'\n'
    for name in $names; do
        [[ -n "$dir" ]] && name="$dir/$name"
        [[ "$name" == "$cur"* ]] && COMPREPLY+=("$name")
    done
    if [[ ${#COMPREPLY[@]} -eq 1 && "${COMPREPLY[0]}" == */ ]]; then
        compopt -o nospace 2>/dev/null
    fi
}

_pykv() {
    COMPREPLY=()
    # Words split at blanks only: bash's COMP_WORDS also splits at ':' and '=', which store
    # URLs and keys (services/web/10.0.0.5:8080) hold.
    local line="${COMP_LINE:0:COMP_POINT}"
    local -a words
    read -ra words <<< "$line"
    [[ -z "$line" || "$line" == *[[:space:]] ]] && words+=("")
    local n=${#words[@]}
    local cur="${words[n-1]}" prev="${words[n-2]}"
    local i word cmd="" dashdash=0 _pykv_store=""
    for ((i = 1; i < n - 1; i++)); do
        word="${words[i]}"
        if [[ $dashdash -eq 1 ]]; then continue; fi
        case "$word" in
            --) dashdash=1 ;;
            --store) _pykv_store="${words[i+1]}"; ((i++)) ;;
            --store=*) _pykv_store="${word#--store=}" ;;
            @VALUED@) ((i++)) ;;
            -*) ;;
            *) [[ -z "$cmd" ]] && cmd="$word" ;;
        esac
    done
    _pykv_complete
    # Bash replaces only the part of the word after its last ':' or '='.
    if [[ "$cur" == *[:=]* && ${#COMPREPLY[@]} -gt 0 ]]; then
        local head="${cur%"${cur##*[:=]}"}"
        COMPREPLY=("${COMPREPLY[@]#"$head"}")
    fi
    return 0
}

_pykv_complete() {
    if [[ $dashdash -eq 1 ]]; then
        case "$cmd" in
            @RUNNERS@) COMPREPLY=($(compgen -c -- "$cur")) ;;
        esac
        return 0
    fi
    case "$prev" in
@CHOICES@
        @VALUED@) return 0 ;;
    esac
    if [[ -z "$cmd" ]]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W "@TOPOPTS@" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "@COMMANDS@" -- "$cur"))
        fi
        return 0
    fi
    case "$cmd" in
@PERCOMMAND@
    esac
}

complete -F _pykv pykv
"""


def _bash(top: _Command, commands: list[_Command]) -> str:
    valued = sorted({o for c in [top, *commands] for o in c.valued})
    choices: dict[str, list[str]] = {}
    for c in [top, *commands]:
        for opt, values in c.choices.items():
            if opt.startswith("-"):
                choices[opt] = values
    choice_cases = "\n".join(
        f'        {opt}) COMPREPLY=($(compgen -W "{" ".join(values)}" -- "$cur")); return 0 ;;'
        for opt, values in sorted(choices.items())
    )
    per_command = []
    for c in commands:
        positional_choices = [v for k, vs in c.choices.items() if not k.startswith("-") for v in vs]
        lines = [f"        {c.name})"]
        lines.append('            if [[ "$cur" == -* ]]; then')
        lines.append(
            f'                COMPREPLY=($(compgen -W "{" ".join(c.flags + c.valued)}" -- "$cur"))'
        )
        if positional_choices:
            lines.append("            else")
            lines.append(
                f'                COMPREPLY=($(compgen -W "{" ".join(positional_choices)}"'
                ' -- "$cur"))'
            )
        elif c.keys:
            lines.append("            else")
            lines.append('                _pykv_keys "$cur"')
        lines.append("            fi")
        lines.append("            ;;")
        per_command.append("\n".join(lines))
    runners = [c.name for c in commands if c.runs_command] or ["__none__"]
    script = _BASH
    for name, value in (
        ("@VALUED@", "|".join(valued) or "__none__"),
        ("@RUNNERS@", "|".join(runners)),
        ("@CHOICES@", choice_cases),
        ("@TOPOPTS@", " ".join(top.flags + top.valued)),
        ("@COMMANDS@", " ".join(c.name for c in commands)),
        ("@PERCOMMAND@", "\n".join(per_command)),
    ):
        script = script.replace(name, value)
    return script


# -- zsh -------------------------------------------------------------------------------------

_ZSH = r"""#compdef pykv
# zsh completion for pykv. Load it with:  source <(pykv completion zsh)  (after compinit),
# or save it as _pykv in a directory of $fpath.

_pykv_keys() {
    # Keys one level at a time: the children of the directory typed so far.
    local cur="$PREFIX" dir="" out
    [[ "$cur" == */* ]] && dir="${cur%/*}"
    out="$(pykv ${_pykv_store:+--store "$_pykv_store"} --timeout 2 ls -- "$dir" 2>/dev/null)" \
        || return 1
    local -a names dirs leaves
    names=("${(@f)out}")
    [[ -n "$dir" ]] && names=("${(@)names/#/$dir/}")
    dirs=(${(M)names:#*/})
    leaves=(${names:#*/})
    (( ${#dirs} )) && compadd -Q -S '' -- "${dirs[@]}"
    (( ${#leaves} )) && compadd -Q -- "${leaves[@]}"
    return 0
}

_pykv() {
    local curcontext="$curcontext" state line ret=1
    local -A opt_args
    local -a commands
    commands=(
@COMMANDS@
    )
    _arguments -C \
@TOPSPECS@
        '1:command:->command' \
        '*::argument:->argument' && ret=0
    case $state in
        command)
            _describe -t commands 'pykv command' commands && ret=0
            ;;
        argument)
            local _pykv_store="${opt_args[--store]}"
            case $words[1] in
@PERCOMMAND@
            esac
            ;;
    esac
    return ret
}

if [[ "$funcstack[1]" == _pykv ]]; then
    _pykv "$@"
else
    compdef _pykv pykv
fi
"""


def _zq(text: str) -> str:
    """Text for inside a single-quoted zsh _arguments spec: no quotes, brackets or colons."""
    text = re.sub(r"[\[\]:]", " ", text).replace("'", "").replace("\\", "")
    return re.sub(r"\s+", " ", text).strip()


def _zsh_option_specs(c: _Command) -> list[str]:
    specs = []
    for opt in c.flags:
        repeat = "*" if opt in ("-v", "--verbose") else ""
        specs.append(f"'{repeat}{opt}[{_zq(c.option_help.get(opt, ''))}]'")
    for opt in c.valued:
        values = c.choices.get(opt)
        action = f"({' '.join(values)})" if values else ""
        specs.append(f"'{opt}[{_zq(c.option_help.get(opt, ''))}]:value:{action}'")
    return specs


def _zsh(top: _Command, commands: list[_Command]) -> str:
    command_lines = "\n".join(f"        '{c.name}:{_zq(c.help)}'" for c in commands)
    top_specs = "".join(f"        {spec} \\\n" for spec in _zsh_option_specs(top))
    per_command = []
    for c in commands:
        specs = _zsh_option_specs(c)
        for action in c.positionals:
            many = action.nargs in ("*", "+", argparse.REMAINDER)
            if action.dest == "command":
                specs.append("'*::command:_normal'")
                continue
            if action.choices:
                completer = f"({' '.join(str(x) for x in action.choices)})"
            elif action.dest in _KEY_ARGS:
                completer = "_pykv_keys"
            else:
                completer = " "
            optional = ":" if action.nargs in ("?", "*") else ""
            specs.append(f"'{'*' if many else ''}{optional}:{action.dest}:{completer}'")
        body = " \\\n                        ".join(specs)
        per_command.append(
            f"                ({c.name})\n"
            f"                    _arguments \\\n                        {body} && ret=0\n"
            "                    ;;"
        )
    return (
        _ZSH.replace("@COMMANDS@", command_lines)
        .replace("@TOPSPECS@", top_specs.rstrip("\n").rstrip("\\").rstrip() + " \\")
        .replace("@PERCOMMAND@", "\n".join(per_command))
    )
