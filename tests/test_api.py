"""The public API is exactly what __all__ lists."""

import transferkit


def test_all_names_exist_and_are_sorted_sets():
    assert len(transferkit.__all__) == len(set(transferkit.__all__))
    for name in transferkit.__all__:
        assert hasattr(transferkit, name), name


def test_exported_members_are_listed():
    public = {
        name
        for name, value in vars(transferkit).items()
        if not name.startswith("_") and not getattr(value, "__name__", "").startswith("transferkit.")
    }
    # submodules are reachable as attributes but are not part of the flat API
    assert public - set(transferkit.__all__) == set()


def test_import_does_not_pull_optional_dependencies():
    import subprocess
    import sys

    code = (
        "import sys, transferkit; "
        "print(','.join(m for m in ('tensorflow_hub', 'keras_tuner') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
