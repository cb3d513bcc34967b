"""A reusable group of click options, applied in the order written (sslfer-eval's image and video commands)."""
from __future__ import annotations


def option_group(*decorators):
    def apply(function):
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return apply
