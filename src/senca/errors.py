"""The one exception type senca raises for bad input."""


class SencaInputError(ValueError):
    """Raised when user input (a file, a field, a parameter) is not what senca expects.

    The message always names the file (or object), the field and what was expected,
    so the command line can print it as one clear line.
    """
