"""
Poor man's configurator, as in nanoGPT. A script defines its settings as globals, then runs
    exec(open('configurator.py').read())
which applies, in order, each config file named on the command line and each --key=value override:
    python train.py config/shakespeare_seqmatch.py --batch_size=32 --device=cuda
A key the script does not define (naming the closest setting, if one is close), or a value of another type,
stops with a clear error before anything is written. --help prints every setting with its default and
comment, read from the script.
"""
import ast
import difflib
import re
import sys
from ast import literal_eval


def _set_config(key, value, where):
    if not isinstance(globals().get(key), (int, float, bool, str)):  # settings are plain values
        settings = [k for k, v in globals().items() if isinstance(v, (int, float, bool, str)) and not k.startswith('_')]
        close = difflib.get_close_matches(key, settings, n=1)
        hint = f"; did you mean {close[0]}?" if close else ''
        raise SystemExit(f"config error: unknown key '{key}' in {where}{hint}")
    default = globals()[key]
    if isinstance(default, float) and type(value) is int:
        value = float(value)  # --learning_rate=1 means 1.0
    if type(value) is not type(default):
        name = type(default).__name__
        raise SystemExit(f"config error: {key}={value!r} in {where} should be {'an' if name[0] in 'aeiou' else 'a'} {name} "
                         f"like the default {default!r}")
    globals()[key] = value


if '--help' in sys.argv[1:] or '-h' in sys.argv[1:]:
    # the settings are read from the calling script's own source, so the help can never drift from it
    _script = open(__file__).read()
    _tree = ast.parse(_script)
    print(f"usage: python {sys.argv[0]} [config/file.py ...] [--key=value ...]")
    print(ast.get_docstring(_tree) or '')
    print("\nsettings (name = default  # what it does):")
    _lines = _script[:_script.index("exec(open('configurator.py')")].splitlines()
    for _line in _lines[_tree.body[0].end_lineno:]:  # after the docstring
        _match = re.match(r'(\w+) = ', _line)
        if _match and isinstance(globals().get(_match.group(1)), (int, float, bool, str)):
            print('  ' + _line)
        elif _line.startswith('# ') and not _line.startswith('# -'):  # a heading such as '# data'
            print(_line)
    sys.exit(0)

for _arg in sys.argv[1:]:
    if not _arg.startswith('--'):
        try:
            _source = open(_arg).read()
        except OSError as e:
            raise SystemExit(f"config error: cannot read config file {_arg}: {e.strerror}")
        print(f"Overriding config with {_arg}:\n{_source}")
        _values = {}
        exec(_source, {}, _values)
        for _key, _value in _values.items():
            if not _key.startswith('_'):
                _set_config(_key, _value, _arg)
    else:
        if '=' not in _arg:
            raise SystemExit(f"config error: expected --key=value, got {_arg}")
        _key, _text = _arg[2:].split('=', 1)
        try:
            _value = literal_eval(_text)  # numbers, booleans, None, lists ...
        except (SyntaxError, ValueError):
            _value = _text  # ... anything else is a string
        print(f"Overriding: {_key} = {_value!r}")
        _set_config(_key, _value, f"--{_key}")
