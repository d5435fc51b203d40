"""Cognito as the account store: the service is its backend-for-frontend."""

from typing import Any

from botocore.exceptions import ClientError

from chassis.problems import Problem, invalid, unauthorized

from .domain import PASSWORD_RULE


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _tokens(result: dict[str, Any], refresh_token: str | None = None) -> dict[str, Any]:
    auth = result["AuthenticationResult"]
    return {
        "access_token": auth["AccessToken"],
        "id_token": auth.get("IdToken"),
        "refresh_token": auth.get("RefreshToken", refresh_token),
        "expires_in": auth.get("ExpiresIn", 3600),
        "token_type": "Bearer",
    }


class Accounts:
    """Sign-up, confirmation and token flows against one user pool and app client."""

    def __init__(self, idp: Any, *, pool_id: str, client_id: str, auto_confirm: bool) -> None:
        self._idp = idp
        self._pool_id = pool_id
        self._client_id = client_id
        self._auto_confirm = auto_confirm

    async def sign_up(self, *, username: str, email: str, password: str) -> tuple[str, bool]:
        """Create the account; returns its `sub` and whether it is confirmed."""
        try:
            result = await self._idp.sign_up(
                ClientId=self._client_id, Username=username, Password=password,
                UserAttributes=[{"Name": "email", "Value": email}])
            if self._auto_confirm:
                await self._idp.admin_confirm_sign_up(UserPoolId=self._pool_id, Username=username)
        except ClientError as error:
            code = _code(error)
            if code == "UsernameExistsException":
                raise invalid("username", "is already taken", status=409) from error
            if code == "InvalidPasswordException":
                raise invalid("password", f"must be {PASSWORD_RULE}") from error
            if code == "InvalidParameterException":
                message = error.response["Error"].get("Message", "invalid sign-up")
                raise Problem(422, message) from error
            raise
        return result["UserSub"], self._auto_confirm or bool(result.get("UserConfirmed"))

    async def confirm(self, *, username: str, code: str) -> None:
        try:
            await self._idp.confirm_sign_up(ClientId=self._client_id, Username=username,
                                            ConfirmationCode=code)
        except ClientError as error:
            if _code(error) in {"CodeMismatchException", "ExpiredCodeException",
                                "UserNotFoundException", "NotAuthorizedException"}:
                raise invalid("code", "is wrong or expired", status=400) from error
            raise

    async def delete(self, username: str) -> None:
        """Undo a sign-up whose profile could not be stored."""
        await self._idp.admin_delete_user(UserPoolId=self._pool_id, Username=username)

    async def log_in(self, *, username: str, password: str) -> dict[str, Any]:
        try:
            result = await self._idp.initiate_auth(
                ClientId=self._client_id, AuthFlow="USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": username, "PASSWORD": password})
        except ClientError as error:
            if _code(error) in {"NotAuthorizedException", "UserNotFoundException"}:
                raise unauthorized("wrong username or password") from error
            if _code(error) == "UserNotConfirmedException":
                raise Problem(403, "the account is not confirmed yet") from error
            raise
        return _tokens(result)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        try:
            result = await self._idp.initiate_auth(
                ClientId=self._client_id, AuthFlow="REFRESH_TOKEN_AUTH",
                AuthParameters={"REFRESH_TOKEN": refresh_token})
        except ClientError as error:
            if _code(error) in {"NotAuthorizedException", "UserNotFoundException"}:
                raise unauthorized("refresh token is invalid or expired") from error
            raise
        return _tokens(result, refresh_token)
