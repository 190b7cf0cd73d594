// Key Vault holding the webhook URL (it carries a token, so it is a secret). Deployed only when the
// webhook sink is on. The app setting DETECTOR_WEBHOOK_URL is a Key Vault reference resolved by the
// platform with the user-assigned identity (keyVaultReferenceIdentity), which rbac.bicep grants
// Key Vault Secrets User on this one secret.

@description('Name of the Key Vault (3-24 characters).')
param name string

@description('Region of the Key Vault.')
param location string

@description('Tags for the Key Vault.')
param tags object = {}

@description('Name of the secret that holds the webhook URL.')
param secretName string

@secure()
@description('The webhook URL (Teams/Slack/Logic App/any HTTPS endpoint).')
param webhookUrl string

@description('Private networking: only the vault\'s private endpoint (network.bicep) reaches it; the deployment still writes the secret through Resource Manager.')
param vnetEnabled bool = false

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true // access by role assignment only, no access policies
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    enablePurgeProtection: true
    // Key Vault references are resolved by the App Service platform over the public endpoint (the app
    // has no virtual network), so the vault firewall stays open; reading still needs the RBAC role.
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }

  resource webhookSecret 'secrets' = {
    name: secretName
    properties: {
      value: webhookUrl
      contentType: 'text/uri-list'
    }
  }
}

output name string = vault.name
output secretName string = vault::webhookSecret.name
// Versionless, so rotating the secret needs no redeploy (the platform re-reads it within 24 h or on restart).
output secretUri string = vault::webhookSecret.properties.secretUri
