"""The public surface is exactly what __all__ says, and nothing private leaks into it."""

import isthmus


def test_all_is_the_public_surface():
    public = {name for name in dir(isthmus) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(isthmus, name)).__name__ == "module"}
    assert public - modules == set(isthmus.__all__) - {"__version__"}


def test_every_exported_name_exists():
    for name in isthmus.__all__:
        assert hasattr(isthmus, name), name
